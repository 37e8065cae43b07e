"""Fixtures: a byte-level BPE tokenizer with a chat template and a tiny random Llama."""

from __future__ import annotations

import pytest

from toolkit import eval_model, eval_tokenizer


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads; the CPU is shared with other jobs."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tokenizer():
    return eval_tokenizer()


@pytest.fixture(scope="session")
def model(tokenizer):
    return eval_model(tokenizer)
