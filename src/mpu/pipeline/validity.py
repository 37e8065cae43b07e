"""Is the embedded benchmark meaningful? Truth ratio and forget quality, minimal version.

A small stand-in for the full metric suite (owned by `mpu.eval`), enough to check that the
target memorised the forget set and the retain model did not: TOFU's per-item truth ratio on
`{forget}_perturbed` (correct = paraphrased_answer, wrong = the K perturbed answers) and the
forget quality = KS-test p-value between two models' truth ratios (METRICS.md §3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mpu.pipeline.train import encode_rows, score


def truth_ratios(model, tokenizer, rows: Sequence[dict], *, pad_id: int) -> list[float]:
    """tr_i = exp(-mean_j w_ij) / (exp(-c_i) + 1e-10), c/w = avg answer loss of the
    paraphrased / perturbed answers given the question."""
    correct = encode_rows(tokenizer, rows, answer_key="paraphrased_answer")
    k = len(rows[0]["perturbed_answer"])
    flat = [{"question": r["question"], "answer": a} for r in rows for a in r["perturbed_answer"]]
    wrong = encode_rows(tokenizer, flat)
    if len(correct) != len(rows) or len(wrong) != k * len(rows):
        raise ValueError("some perturbed items encode to no answer tokens")
    c = score(model, correct, pad_id=pad_id)["avg_loss"]
    w = score(model, wrong, pad_id=pad_id)["avg_loss"]
    out = []
    for i, ci in enumerate(c):
        w_mean = sum(w[i * k : (i + 1) * k]) / k
        out.append(math.exp(-w_mean) / (math.exp(-ci) + 1e-10))
    return out


def forget_quality(tr_model: Sequence[float], tr_retain: Sequence[float]) -> float:
    """KS two-sample p-value of the two truth-ratio samples (1 = indistinguishable)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(list(tr_model), list(tr_retain)).pvalue)


def closer_to_1(trs: Sequence[float]) -> float:
    """Aggregate of the forget truth ratio: mean of min(tr, 1/tr) (1 = no preference)."""
    return sum(min(t, 1 / (t + 1e-10)) for t in trs) / len(trs)
