"""Tiny offline models for the method tests (built in memory, no downloads)."""

from __future__ import annotations

import copy

import pytest
import torch

from toolkit import finetune, synthetic_qa, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def qa_rows():
    return synthetic_qa(16, seed=0)


@pytest.fixture(scope="session")
def random_pair(tok):
    """Two different untrained tiny Llamas: (model, reference)."""
    return tiny_llama(tok, seed=0), tiny_llama(tok, seed=1)


@pytest.fixture(scope="session")
def _target(tok, qa_rows):
    torch.set_num_threads(1)
    return finetune(tiny_llama(tok, seed=0), tok, qa_rows)


@pytest.fixture()
def target(_target):
    """A fresh copy of the tiny model fine-tuned on all 16 synthetic QA rows."""
    return copy.deepcopy(_target)
