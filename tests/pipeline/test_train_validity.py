"""Scoring matches the METRICS.md §2 definition; truth ratio / forget quality behave as TOFU's."""

from __future__ import annotations

import math

import pytest
import torch

from mpu.data.formatting import collate, encode_qa
from mpu.pipeline import validity
from mpu.pipeline.tiny import TinyGeometry, build_tiny_llama, train_tokenizer
from mpu.pipeline.train import answer_loss, encode_rows, score, train_lm

ROWS = [
    {
        "question": f"Where was Author{i} born?",
        "answer": f"Author{i} was born in Town{i}.",
        "paraphrased_answer": f"The birthplace of Author{i} is Town{i}.",
        "perturbed_answer": [
            f"The birthplace of Author{i} is Town{(i + j) % 8}." for j in (1, 2, 3)
        ],
    }
    for i in range(8)
]


@pytest.fixture(scope="module")
def tiny():
    texts = [t for r in ROWS for t in (r["question"], r["answer"], *r["perturbed_answer"])]
    tok = train_tokenizer(texts * 3, vocab_size=300)
    geom = TinyGeometry(
        hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2
    )
    return tok, build_tiny_llama(tok, geom, seed=0)


def test_tokenizer_chat_template_and_bos(tiny):
    tok, _ = tiny
    enc = encode_qa(tok, "Where?", "Here.")
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[-1] == tok.eos_token_id
    assert enc.input_ids[: len(enc.prompt_ids)] == enc.prompt_ids  # prompt is a prefix
    assert enc.n_answer_tokens >= 2  # answer + EOS labelled
    assert tok.pad_token_id not in (tok.eos_token_id, tok.bos_token_id)
    assert tok("plain text")["input_ids"][0] == tok.bos_token_id


def test_score_matches_hf_loss(tiny):
    tok, model = tiny
    items = encode_rows(tok, ROWS[:3])
    s = score(model, items, pad_id=tok.pad_token_id, batch_size=2)
    for item, loss, prob in zip(items, s["avg_loss"], s["prob"], strict=True):
        with torch.no_grad():
            ref = model(
                input_ids=torch.tensor([item.input_ids]), labels=torch.tensor([item.labels])
            ).loss
        assert loss == pytest.approx(float(ref), rel=1e-4)
        assert prob == pytest.approx(math.exp(-float(ref)), rel=1e-4)


def test_answer_loss_is_the_token_mean_cross_entropy(tiny):
    """The answer-positions-only head gives HF's loss on a padded batch, and its gradient."""
    tok, model = tiny
    items = encode_rows(tok, ROWS[:3])
    batch = collate(
        [i.input_ids for i in items],
        pad_id=tok.pad_token_id,
        labels=[i.labels for i in items],
        mask_mode="padding",
    )
    fast = answer_loss(model, batch)
    ref = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, labels=batch["labels"])
    assert float(fast) == pytest.approx(float(ref.loss), rel=1e-5)
    g_fast = torch.autograd.grad(fast, model.lm_head.weight)[0]
    g_ref = torch.autograd.grad(ref.loss, model.lm_head.weight)[0]
    assert float((g_fast - g_ref).norm() / g_ref.norm()) < 1e-5
    model.config.final_logit_softcapping = 30.0  # a logit transform: the full-logits path
    try:
        assert float(answer_loss(model, batch)) == pytest.approx(float(ref.loss), rel=1e-5)
    finally:
        model.config.final_logit_softcapping = None


@pytest.mark.slow
def test_training_memorises_and_truth_ratio_moves(tiny):
    tok, model = tiny
    before = validity.truth_ratios(model, tok, ROWS, pad_id=tok.pad_token_id)
    prob_before = score(model, encode_rows(tok, ROWS), pad_id=tok.pad_token_id)["prob"]
    stats = train_lm(
        model, encode_rows(tok, ROWS) + encode_rows(tok, ROWS, answer_key="paraphrased_answer"),
        pad_id=tok.pad_token_id, epochs=60, lr=3e-3, batch_size=4, progress=False,
    )  # fmt: skip
    assert stats.tokens > 0
    s = score(model, encode_rows(tok, ROWS), pad_id=tok.pad_token_id)
    assert stats.final_loss < 0.5
    assert sum(s["prob"]) / 8 > 0.6 > 6 * sum(prob_before) / 8
    assert min(s["accuracy"]) > 0.7
    after = validity.truth_ratios(model, tok, ROWS, pad_id=tok.pad_token_id)
    # an untrained model has no preference; a trained one prefers the true paraphrase
    assert validity.closer_to_1(before) > 0.9
    assert validity.closer_to_1(after) < validity.closer_to_1(before) - 0.1
    assert max(after) < 1.0


def test_forget_quality_is_a_ks_p_value():
    same = [0.1 * i for i in range(40)]
    assert validity.forget_quality(same, same) == 1.0
    assert validity.forget_quality(same, [x + 10 for x in same]) < 1e-6
    assert validity.closer_to_1([1.0, 0.5, 2.0]) == pytest.approx((1 + 0.5 + 0.5) / 3, rel=1e-6)
