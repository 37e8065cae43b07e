"""Metric maths on plain numbers: no model, no files (docs/metrics.md).

Each function mirrors one OpenUnlearning computation, quirks included, so the unit tests can
pin it against an independent computation (scipy, sklearn, rouge-score, hand arithmetic).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

TR_EPS = 1e-10  # the epsilon OpenUnlearning adds in truth ratio, forget quality and privleak


def mean_agg(values: Sequence[Any]) -> float | None:
    """`aggregate_to_1D` then mean over items: lists (multi-answer) are averaged first; None skipped."""
    kept = [v for v in values if v is not None]
    if not kept:
        return None
    arr = np.asarray(kept, dtype=np.float64)
    per_item = arr.mean(axis=tuple(range(1, arr.ndim))) if arr.ndim > 1 else arr
    return float(np.mean(per_item))


def truth_ratios(correct_avg_loss: Sequence[float], wrong_avg_loss: Sequence[Any]) -> np.ndarray:
    """Per-item tr_i = exp(-mean_j w_ij) / (exp(-c_i) + 1e-10) ("wrong over correct")."""
    c = np.asarray(correct_avg_loss, dtype=np.float64)
    w = np.asarray(wrong_avg_loss, dtype=np.float64)
    w = w.mean(axis=tuple(range(1, w.ndim))) if w.ndim > 1 else w
    return np.exp(-w) / (np.exp(-c) + TR_EPS)


def truth_ratio_prob_mean(
    correct_avg_loss: Sequence[float], wrong_avg_loss: Sequence[Any]
) -> np.ndarray:
    """Upstream's unused `prob_mean` variant: p_c / (p_c + p_w + 1e-10), p_w the geometric mean."""
    c = np.asarray(correct_avg_loss, dtype=np.float64)
    w = np.asarray(wrong_avg_loss, dtype=np.float64)
    w = w.mean(axis=tuple(range(1, w.ndim))) if w.ndim > 1 else w
    return np.exp(-c) / (np.exp(-c) + np.exp(-w) + TR_EPS)


def aggregate_truth_ratio(tr: Sequence[float], aggregator: str) -> float:
    """closer_to_1_better = mean min(tr, 1/tr); true_better = mean max(0, 1 - tr); prob_mean = mean."""
    arr = np.asarray(tr, dtype=np.float64)
    if aggregator == "closer_to_1_better":
        return float(np.mean(np.minimum(arr, 1 / (arr + TR_EPS))))
    if aggregator == "true_better":
        return float(np.mean(np.maximum(0, 1 - arr)))
    if aggregator == "prob_mean":
        return float(np.mean(arr))
    raise ValueError(f"unknown truth-ratio aggregator {aggregator!r}")


def forget_quality(model_tr: Sequence[float], reference_tr: Sequence[float]) -> float:
    """Two-sided KS p-value between the evaluated and the retain model's truth ratios (as upstream,
    on 1/(tr + 1e-10), which KS does not care about)."""
    from scipy.stats import ks_2samp

    a = 1 / (np.asarray(model_tr, dtype=np.float64) + TR_EPS)
    b = 1 / (np.asarray(reference_tr, dtype=np.float64) + TR_EPS)
    return float(ks_2samp(a, b).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """Model utility: scipy's harmonic mean of the nine retain/ra/wf scores (0 if any is 0)."""
    from scipy.stats import hmean

    arr = np.asarray(values, dtype=np.float64)
    if np.any(arr == 0):
        return 0.0
    return float(hmean(arr))


def normalised_probability(prob_correct: float, probs_wrong: Sequence[float]) -> float:
    """probability_w_options: p_c / (p_c + sum_j p_wj + 1e-10) with length-normalised probabilities."""
    return float(prob_correct / (prob_correct + float(np.sum(probs_wrong)) + TR_EPS))


def privleak(auc_unlearned: float, auc_retain: float) -> float:
    """((1 - AUC_unl) - (1 - AUC_ret)) / (1 - AUC_ret + 1e-10) * 100; 0 means retain-like."""
    return ((1 - auc_unlearned) - (1 - auc_retain)) / (1 - auc_retain + TR_EPS) * 100


def extraction_strength(
    preds: Sequence[int], labels: Sequence[int], *, floor: bool = True
) -> float:
    """1 - k*/n with k* the shortest prefix to drop so the argmax predictions match the labels.

    `floor=True` mirrors upstream's loop, where k* stays n-1 when no suffix matches (ES >= 1/n);
    `floor=False` uses k* = n (ES = 0). n = 0 scores 0.
    """
    p, y = list(map(int, preds)), list(map(int, labels))
    n = len(y)
    if n == 0:
        return 0.0
    k_star = n - 1 if floor else n
    for k in range(n):
        if p[k:] == y[k:]:
            k_star = k
            break
    return 1 - k_star / n


def exact_memorization(preds: Sequence[int], labels: Sequence[int]) -> float | None:
    """Fraction of positions whose argmax prediction equals the label; None when n = 0."""
    if len(labels) == 0:
        return None
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def min_k_score(token_logprobs: Sequence[float], k: float = 0.4) -> float:
    """Min-K%: minus the mean of the max(1, floor(k n)) smallest token log-probs; 0 when n = 0."""
    lp = np.sort(np.asarray(token_logprobs, dtype=np.float64))
    if lp.size == 0:
        return 0.0
    return float(-np.mean(lp[: max(1, int(len(lp) * k))]))


def min_k_pp_z(token_logprob: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Min-K++ per-token z = (log p(x) - mu) / sqrt(max(var, 1e-6)) with mu, var over the vocab."""
    return (np.asarray(token_logprob) - np.asarray(mu)) / np.sqrt(np.maximum(var, 1e-6))


def zlib_score(avg_loss: float, text: str) -> float:
    """ZLib attack: average loss divided by the zlib-compressed length of the labelled text."""
    return avg_loss / len(zlib.compress(text.encode("utf-8")))


def roc_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """ROC AUC with label 0 = forget, 1 = holdout (higher score = less likely a member)."""
    from sklearn.metrics import roc_auc_score

    labels = [0] * len(forget_scores) + [1] * len(holdout_scores)
    return float(roc_auc_score(labels, [*forget_scores, *holdout_scores]))


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge(ground_truth: str, generation: str) -> dict[str, float]:
    """rouge1 recall, rougeL F1 and rougeL recall of a generation against its ground truth."""
    s = _scorer().score(ground_truth, generation)
    return {
        "rouge1_recall": s["rouge1"].recall,
        "rougeL_f1": s["rougeL"].fmeasure,
        "rougeL_recall": s["rougeL"].recall,
    }


def item_result(values: Mapping[Any, Any], agg_value: float | None) -> dict[str, Any]:
    """The per-item metric schema `{"agg_value", "value_by_index"}`."""
    return {"agg_value": agg_value, "value_by_index": dict(values)}
