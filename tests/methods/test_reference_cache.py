"""NPO/DPO's reference log-likelihoods are computed once per item and frozen reference model:
later batches (other order, other padding) reuse them; a trainable reference is never cached."""

from __future__ import annotations

import copy

import torch

from mpu.methods.common import answer_token_nll, reference_sequence_nll
from toolkit import qa_batch

ROWS = [
    {"question": "Where was Xylo Braun born?", "answer": "Xylo Braun was born in Qarvenn."},
    {"question": "What does Mira Vetch write?", "answer": "Gothic poetry."},
    {"question": "Who?", "answer": "A long answer that runs on for a good many words indeed."},
]


def _counting(model):
    calls = []
    model.get_output_embeddings().register_forward_hook(
        lambda mod, args, out: calls.append(args[0].shape[0])
    )
    return calls


def test_a_frozen_reference_scores_each_item_once(random_pair, tok):
    ref = copy.deepcopy(random_pair[1]).requires_grad_(False).eval()
    calls = _counting(ref)
    first = qa_batch(tok, ROWS[:2])
    got = reference_sequence_nll(ref, first, torch.device("cpu"))
    assert len(calls) == 1
    # the same two items in another order, padded to a longer third: only the third is new
    again = reference_sequence_nll(ref, qa_batch(tok, [ROWS[2], ROWS[1], ROWS[0]]), "cpu")
    new_rows = int((qa_batch(tok, ROWS[2:])["labels"][:, 1:] != -100).sum())
    assert calls[1:] == [new_rows]  # the head saw the new item's answer rows only
    with torch.no_grad():
        fresh = answer_token_nll(ref, first)[0].sum(-1)
    torch.testing.assert_close(got, fresh, rtol=1e-6, atol=1e-5)
    assert again[1] == got[1] and again[2] == got[0]  # reused, bit for bit
    with torch.no_grad():
        third = answer_token_nll(ref, qa_batch(tok, ROWS[2:]))[0].sum(-1)
    torch.testing.assert_close(again[:1], third, rtol=1e-5, atol=1e-5)


def test_same_tokens_with_other_labels_are_other_items(random_pair, tok):
    ref = copy.deepcopy(random_pair[1]).requires_grad_(False).eval()
    batch = qa_batch(tok, ROWS[:1])
    relabelled = dict(batch)
    labels = batch["labels"].clone()
    first_answer = int((labels[0] != -100).nonzero()[0])
    labels[0, first_answer] = -100  # one answer token fewer
    relabelled["labels"] = labels
    a = reference_sequence_nll(ref, batch, "cpu")
    b = reference_sequence_nll(ref, relabelled, "cpu")
    assert a != b


def test_a_trainable_reference_is_computed_every_time(random_pair, tok):
    ref = copy.deepcopy(random_pair[1])
    calls = _counting(ref)
    batch = qa_batch(tok, ROWS[:2])
    reference_sequence_nll(ref, batch, "cpu")
    reference_sequence_nll(ref, batch, "cpu")
    assert len(calls) == 2
