"""The client tests' shared world: the tiny tokenizer, 16 synthetic QA rows and a tiny Llama
fine-tuned on them (the model every unlearning run starts from)."""

import pytest
import torch

from toolkit import finetune, synthetic_qa, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    torch.set_num_threads(1)
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def rows():
    return synthetic_qa(16, seed=0)


@pytest.fixture(scope="module")
def target(tok, rows):
    """Fine-tuned on `rows`; tests deep-copy it before training."""
    return finetune(tiny_llama(tok, seed=0), tok, rows, steps=60)
