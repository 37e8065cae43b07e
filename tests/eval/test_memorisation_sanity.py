"""End-to-end sanity of the metrics on models trained here: a target that memorised the forget set
and a retain model that never saw it (the must-show-2 pattern, at test scale)."""

from __future__ import annotations

import random

import pytest
import torch

from mpu.eval.tofu import evaluate_tofu
from mpu.text import collate, encode_qa, pad_id_of
from toolkit import WORDS, eval_model, fmt_of

METRICS = ["forget_truth_ratio", "forget_quality", "mia_min_k", "mia_loss", "forget_Q_A_Prob"]


def _data(n: int = 48, k: int = 3, seed: int = 3) -> dict[str, list[dict]]:
    rng = random.Random(seed)

    def s(m):
        return " ".join(rng.choice(WORDS) for _ in range(m))

    def qa():
        return {"question": s(5), "answer": s(6)}

    forget = []
    for _ in range(n):
        row = qa()
        # the paraphrase repeats the answer, so memorising it moves the truth ratio
        row |= {"paraphrased_answer": row["answer"], "paraphrased_question": row["question"]}
        row["perturbed_answer"] = [s(6) for _ in range(k)]
        forget.append(row)
    return {
        "forget10_perturbed": forget,
        "retain": [qa() for _ in range(n)],
        "holdout10": [qa() for _ in range(n)],
    }


def _train(model, tokenizer, rows, epochs: int = 40, seed: int = 0):
    torch.manual_seed(seed)
    enc = [encode_qa(tokenizer, r["question"], r["answer"], fmt=fmt_of(tokenizer)) for r in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    model.train()
    gen = random.Random(seed)
    for _ in range(epochs):
        order = list(range(len(enc)))
        gen.shuffle(order)
        for i in range(0, len(order), 16):
            items = [enc[j] for j in order[i : i + 16]]
            batch = collate(
                [e.input_ids for e in items],
                pad_id=pad_id_of(tokenizer),
                labels=[e.labels for e in items],
                mask_mode="padding",
            )
            loss = model(**batch).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.mark.slow
def test_target_vs_retain_metrics(tokenizer):
    data = _data()
    forget_qa = [
        {"question": r["question"], "answer": r["answer"]} for r in data["forget10_perturbed"]
    ]
    target = _train(eval_model(tokenizer, seed=1, hidden=64), tokenizer, data["retain"] + forget_qa)
    retain = _train(eval_model(tokenizer, seed=1, hidden=64), tokenizer, data["retain"])
    kw = {"metrics": METRICS, "batch_size": 16}
    ret = evaluate_tofu(retain, tokenizer, data, **kw)
    tgt = evaluate_tofu(target, tokenizer, data, retain_logs={**ret, "_source": "retain"}, **kw)
    assert tgt["forget_Q_A_Prob"]["agg_value"] > 2 * ret["forget_Q_A_Prob"]["agg_value"]
    assert tgt["forget_quality"]["agg_value"] < 1e-3
    assert tgt["mia_min_k"]["auc"] >= 0.8 and tgt["mia_loss"]["auc"] >= 0.8
    assert abs(ret["mia_min_k"]["auc"] - 0.5) <= 0.15  # 48 vs 48 items: AUC s.e. ≈ 0.06
    same = evaluate_tofu(retain, tokenizer, data, retain_logs={**ret, "_source": "retain"}, **kw)
    assert same["forget_quality"]["agg_value"] == pytest.approx(1.0)
