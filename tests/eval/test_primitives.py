"""Forward-pass primitives and MIAs against unbatched, hand-written computations on a tiny Llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mpu.eval import metrics as M
from mpu.eval.mia import run_attacks
from mpu.eval.primitives import (
    cut_generation,
    gradnorm_scores,
    greedy_generate,
    ground_truth_text,
    score_items,
)
from mpu.text import encode_qa, pad_id_of
from toolkit import fmt_of

QA = [
    ("what is the name of the author", "the author was born in paris"),
    ("where did her father work", "as a doctor"),
    ("what genre", "fantasy and mystery and science fiction poetry about dragons"),
    ("first novel", "love"),
]


def _manual(model, enc):
    """Unpadded single-item forward: per-token log-probs of every labelled token."""
    ids = torch.tensor([enc.input_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    pos = [t for t, y in enumerate(enc.labels) if y != -100]
    return np.array([float(logp[t - 1, enc.input_ids[t]]) for t in pos]), logp, pos


@pytest.fixture(scope="module")
def encoded(tokenizer):
    return [encode_qa(tokenizer, q, a, fmt=fmt_of(tokenizer)) for q, a in QA]


def test_score_items_matches_unbatched_computation(model, tokenizer, encoded):
    stats = score_items(model, encoded, pad_id=pad_id_of(tokenizer), batch_size=3)
    for enc, st in zip(encoded, stats, strict=True):
        lp, logp, pos = _manual(model, enc)
        assert st.avg_loss == pytest.approx(-lp.mean(), abs=1e-5)
        assert st.prob == pytest.approx(np.exp(lp.mean()), rel=1e-4)
        # I_b drops the last labelled token (the final EOS)
        assert st.token_logprobs == pytest.approx(lp[:-1], abs=1e-5)
        assert list(st.token_labels) == [enc.input_ids[t] for t in pos[:-1]]
        assert list(st.token_preds) == [int(logp[t - 1].argmax()) for t in pos[:-1]]
        rows = logp[[t - 1 for t in pos[:-1]]]
        p = rows.exp()
        mu = (p * rows).sum(-1)
        var = (p * rows**2).sum(-1) - mu**2
        z = (torch.tensor(lp[:-1]) - mu) / var.clamp(min=1e-6).sqrt()
        assert st.token_z == pytest.approx(z.numpy(), rel=5e-3, abs=1e-4)  # fp32 variance


def test_greedy_generate_matches_manual_argmax_loop(model, tokenizer, encoded):
    prompts = [e.prompt_ids for e in encoded]
    texts = greedy_generate(
        model, tokenizer, prompts, max_new_tokens=6, pad_id=pad_id_of(tokenizer), batch_size=4
    )
    for prompt, text in zip(prompts, texts, strict=True):
        ids = list(prompt)
        for _ in range(6):
            with torch.no_grad():
                nxt = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            ids.append(nxt)
            if nxt == tokenizer.eos_token_id:
                break
        manual = tokenizer.decode(ids[len(prompt) :], skip_special_tokens=True)
        assert text == cut_generation(manual, tokenizer, [])


def test_cut_generation_and_ground_truth(tokenizer, encoded):
    assert cut_generation(" a b\n\nQuestion: c", tokenizer, ["\n\n", "Question:"]) == "a b"
    assert cut_generation(f"x{tokenizer.eos_token}y", tokenizer, []) == "x"
    assert ground_truth_text(tokenizer, encoded[0]) == QA[0][1]


def test_attacks_match_manual_scores_and_sklearn_auc(model, tokenizer, encoded):
    forget, holdout = encoded[:2], encoded[2:]
    res = run_attacks(
        model,
        tokenizer,
        ["mia_loss", "mia_min_k", "mia_min_k_plus_plus", "mia_zlib", "mia_reference"],
        forget,
        holdout,
        forget_index=[0, 1],
        holdout_index=[2, 3],
        pad_id=pad_id_of(tokenizer),
        reference_model=model,
    )
    losses = [-_manual(model, e)[0].mean() for e in encoded]
    got = [res["mia_loss"]["forget"]["value_by_index"][i]["score"] for i in (0, 1)]
    got += [res["mia_loss"]["holdout"]["value_by_index"][i]["score"] for i in (2, 3)]
    assert got == pytest.approx(losses, abs=1e-5)
    assert res["mia_loss"]["auc"] == roc_auc_score([0, 0, 1, 1], got)
    assert res["mia_loss"]["agg_value"] == res["mia_loss"]["auc"]
    assert res["mia_loss"]["forget"]["agg_value"] == pytest.approx(np.mean(got[:2]))
    mink = [M.min_k_score(_manual(model, e)[0][:-1], 0.4) for e in encoded]
    assert res["mia_min_k"]["forget"]["value_by_index"][1]["score"] == pytest.approx(
        mink[1], abs=1e-5
    )
    ref = [v["score"] for v in res["mia_reference"]["forget"]["value_by_index"].values()]
    assert ref == pytest.approx([0.0, 0.0], abs=1e-6)  # reference = target model
    text = tokenizer.decode([y for y in encoded[2].labels if y != -100], skip_special_tokens=True)
    z = res["mia_zlib"]["holdout"]["value_by_index"][2]["score"]
    assert z == pytest.approx(losses[2] / M.zlib.compress(text.encode()).__len__(), abs=1e-6)


def test_gradnorm_matches_manual_backward(model, tokenizer, encoded):
    enc = encoded[0]
    score = gradnorm_scores(model, [enc], pad_id=pad_id_of(tokenizer))[0]
    model.train()
    ids = torch.tensor([enc.input_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0], -1)
    pos = [t for t, y in enumerate(enc.labels) if y != -100][:-1]
    loss = -torch.stack([logp[t - 1, enc.input_ids[t]] for t in pos]).mean()
    model.zero_grad()
    loss.backward()
    manual = torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).mean()
    model.zero_grad(set_to_none=True)
    model.eval()
    assert score == pytest.approx(float(manual), rel=1e-4)
    assert not model.training


def test_attention_mask_flag_reproduces_llama3_quirk(model, tokenizer, encoded):
    """pad = EOS (as Llama-3 instruct): upstream's mask hides every in-prompt EOS token too."""
    eos = tokenizer.eos_token_id
    enc = encoded[0]
    assert enc.prompt_ids.count(eos) >= 1  # the user turn ends with EOS
    quirk = score_items(model, [enc], pad_id=eos, mask_mode="pad_id")[0]
    fixed = score_items(model, [enc], pad_id=eos, mask_mode="padding")[0]
    ids = torch.tensor([enc.input_ids])
    pos = [t for t, y in enumerate(enc.labels) if y != -100]

    def loss(mask):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[0], -1)
        return -float(sum(logp[t - 1, enc.input_ids[t]] for t in pos)) / len(pos)

    assert quirk.avg_loss == pytest.approx(loss((ids != eos).long()), abs=1e-5)
    assert fixed.avg_loss == pytest.approx(loss(torch.ones_like(ids)), abs=1e-5)
    assert quirk.avg_loss != pytest.approx(fixed.avg_loss, abs=1e-4)
