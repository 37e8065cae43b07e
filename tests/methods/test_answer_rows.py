"""The training losses apply the LM head only at answer positions (`answer_token_nll`): same
values and gradients as the full logits, up to fp32 rounding, with the head fed exactly the
rows that predict a labelled token."""

from __future__ import annotations

import copy

import pytest
import torch

from mpu.methods import common
from mpu.methods.common import answer_token_nll, forward_logits, token_nll
from toolkit import qa_batch

ROWS = [
    {"question": "Where was Xylo Braun born?", "answer": "Xylo Braun was born in Qarvenn."},
    {"question": "What does Mira Vetch write?", "answer": "Gothic poetry."},
    {"question": "Who?", "answer": "A long answer that runs on for a good many words indeed."},
]


def _grads(model, nll_fn, batch):
    model.zero_grad(set_to_none=True)
    nll, mask = nll_fn(model, batch)
    (nll.sum(-1) * torch.tensor([1.0, -2.0, 0.5])).sum().backward()  # items weighted apart
    return nll.detach(), mask, {n: p.grad.clone() for n, p in model.named_parameters()}


def _full(model, batch):
    return token_nll(forward_logits(model, batch), batch["labels"])


def test_answer_rows_match_the_full_logits_in_value_and_gradient(random_pair, tok):
    model, _ = random_pair
    batch = qa_batch(tok, ROWS)
    fast, mask, g_fast = _grads(model, answer_token_nll, batch)
    full, full_mask, g_full = _grads(model, _full, batch)
    assert torch.equal(mask, full_mask)
    assert torch.all(fast[~mask] == 0)
    # fp32: a sum of ~10 per-token losses of size ~8, rounding 1e-7 relative per op
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    for name, g in g_full.items():
        torch.testing.assert_close(g_fast[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_the_head_sees_only_the_answer_rows(random_pair, tok):
    model, _ = random_pair
    batch = qa_batch(tok, ROWS)
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda mod, args, out: seen.append(args[0].shape[:-1].numel())
    )
    try:
        _, mask = answer_token_nll(model, batch)
    finally:
        hook.remove()
    assert seen == [int(mask.sum())]
    assert 0 < seen[0] < batch["input_ids"].numel() // 2  # the prompts and padding are skipped


def test_other_families_take_the_full_logits_bit_for_bit(random_pair, tok, monkeypatch):
    from mpu.arch import families

    model, _ = random_pair
    batch = qa_batch(tok, ROWS)
    monkeypatch.setattr(families, "plain_head", lambda m: False)
    assert not common._head_apart(model)
    with torch.no_grad():
        got, mask = answer_token_nll(model, batch)
        want, want_mask = _full(model, batch)
    assert torch.equal(got, want) and torch.equal(mask, want_mask)


@pytest.mark.parametrize("method", ["GradAscent", "GradDiff", "NPO", "SimNPO", "WGA"])
def test_every_answer_only_method_still_moves_the_forget_loss_down_its_gradient(
    random_pair, tok, method
):
    """One SGD step along each loss's gradient changes it as the first-order term predicts:
    the gradient flows through the gathered rows."""
    from mpu.methods import build_method_config, get_method

    model, ref = copy.deepcopy(random_pair[0]), random_pair[1]
    batches = {"forget": qa_batch(tok, ROWS[:2]), "retain": qa_batch(tok, ROWS[2:])}
    spec, hp = get_method(method), build_method_config(method, "openunlearning", {})
    model.zero_grad(set_to_none=True)
    loss, _ = spec.loss(model, batches, ref, hp)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    sq = sum(float((p.grad**2).sum()) for p in params)
    assert sq > 0
    eta = 1e-3 / sq**0.5
    with torch.no_grad():
        for p in params:
            p.sub_(eta * p.grad)
        after, _ = spec.loss(model, batches, ref, hp)
    assert float(after) - float(loss.detach()) == pytest.approx(-eta * sq, rel=0.2)
