"""The preparation's training loop: the tiny tokenizer's chat contract, the answer-only loss,
and memorisation measured by `mpu.eval` (the one metric stack)."""

from __future__ import annotations

import pytest
import torch

from mpu.eval.tofu import evaluate_tofu
from mpu.pipeline.tiny import TinyGeometry, build_tiny_llama, train_tokenizer
from mpu.pipeline.train import answer_loss, encode_rows, train_lm
from mpu.text import collate, encode_qa, family_default

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


def _fmt(tok):
    return family_default(tok, "llama")


def test_tokenizer_chat_template_and_bos(tiny):
    tok, _ = tiny
    enc = encode_qa(tok, "Where?", "Here.", fmt=_fmt(tok))
    assert _fmt(tok).template == "chat" and _fmt(tok).system_prompt is None
    assert enc.input_ids[0] == tok.bos_token_id and enc.input_ids[-1] == tok.eos_token_id
    assert enc.input_ids[: len(enc.prompt_ids)] == enc.prompt_ids  # prompt is a prefix
    assert enc.n_answer_tokens >= 2  # answer + EOS labelled
    assert tok.pad_token_id not in (tok.eos_token_id, tok.bos_token_id)
    assert tok("plain text")["input_ids"][0] == tok.bos_token_id


def test_answer_loss_is_the_token_mean_cross_entropy(tiny):
    """The answer-positions-only head gives HF's loss on a padded batch, and its gradient."""
    tok, model = tiny
    items = encode_rows(tok, ROWS[:3], fmt=_fmt(tok))
    batch = collate(
        [i.input_ids for i in items],
        pad_id=tok.pad_token_id,
        labels=[i.labels for i in items],
        mask_mode="padding",
    )
    fast = answer_loss(model, batch)
    ref = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, labels=batch["labels"])
    assert float(fast.detach()) == pytest.approx(float(ref.loss.detach()), rel=1e-5)
    g_fast = torch.autograd.grad(fast, model.lm_head.weight)[0]
    g_ref = torch.autograd.grad(ref.loss, model.lm_head.weight)[0]
    assert float((g_fast - g_ref).norm() / g_ref.norm()) < 1e-5
    model.config.final_logit_softcapping = 30.0  # a logit transform: the full-logits path
    try:
        assert float(answer_loss(model, batch).detach()) == pytest.approx(
            float(ref.loss.detach()), rel=1e-5
        )
    finally:
        model.config.final_logit_softcapping = None


def _scores(model, tok):
    data = {"forget10_perturbed": ROWS, "holdout10": ROWS}
    metrics = ["forget_Q_A_Prob", "forget_truth_ratio", "exact_memorization"]
    res = evaluate_tofu(model, tok, data, metrics=metrics, prompt=_fmt(tok), progress=False)
    return {m: res[m]["agg_value"] for m in metrics}


@pytest.mark.slow
def test_training_memorises_and_truth_ratio_moves(tiny):
    tok, model = tiny
    before = _scores(model, tok)
    stats = train_lm(
        model,
        encode_rows(tok, ROWS, fmt=_fmt(tok))
        + encode_rows(tok, ROWS, fmt=_fmt(tok), answer_key="paraphrased_answer"),
        pad_id=tok.pad_token_id, epochs=60, lr=3e-3, batch_size=4, progress=False,
    )  # fmt: skip
    assert stats.tokens > 0 and stats.final_loss < 0.5
    after = _scores(model, tok)
    assert after["forget_Q_A_Prob"] > 0.6 > 6 * before["forget_Q_A_Prob"]
    assert after["exact_memorization"] > 0.7
    # an untrained model has no preference; a trained one prefers the true paraphrase
    assert before["forget_truth_ratio"] > 0.9
    assert after["forget_truth_ratio"] < before["forget_truth_ratio"] - 0.1
