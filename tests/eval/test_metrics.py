"""Each metric against an independent computation on a tiny hand-made case."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
from rouge_score import rouge_scorer
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from mpu.eval import metrics as M


def test_truth_ratio_by_hand():
    c = [1.0, 0.5]
    w = [[2.0, 3.0], [0.1, 0.3]]
    tr = M.truth_ratios(c, w)
    by_hand = [math.exp(-2.5) / (math.exp(-1.0) + 1e-10), math.exp(-0.2) / (math.exp(-0.5) + 1e-10)]
    assert tr == pytest.approx(by_hand, rel=1e-12)
    closer = (min(by_hand[0], 1 / by_hand[0]) + min(by_hand[1], 1 / by_hand[1])) / 2
    assert M.aggregate_truth_ratio(tr, "closer_to_1_better") == pytest.approx(closer, rel=1e-9)
    true_better = (max(0, 1 - by_hand[0]) + max(0, 1 - by_hand[1])) / 2
    assert M.aggregate_truth_ratio(tr, "true_better") == pytest.approx(true_better, rel=1e-12)
    pm = M.truth_ratio_prob_mean([1.0], [[2.0, 3.0]])
    assert pm[0] == pytest.approx(math.exp(-1) / (math.exp(-1) + math.exp(-2.5)), rel=1e-9)
    with pytest.raises(ValueError, match="aggregator"):
        M.aggregate_truth_ratio(tr, "nope")


def test_forget_quality_is_scipy_ks_pvalue():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(size=40), rng.lognormal(0.5, size=40)
    # KS on the raw ratios: upstream's 1/(tr + eps) is a monotone transform
    assert M.forget_quality(a, b) == pytest.approx(ks_2samp(a, b).pvalue, rel=1e-9)
    assert M.forget_quality(a, a) == pytest.approx(1.0)
    far = M.forget_quality(np.full(40, 0.01) + rng.random(40) * 1e-3, np.ones(40) + rng.random(40))
    assert far < 1e-10


def test_harmonic_mean_by_hand():
    xs = [0.5, 0.25, 1.0, 0.8, 0.4, 0.3, 0.9, 0.6, 0.7]
    assert M.harmonic_mean(xs) == pytest.approx(9 / sum(1 / x for x in xs), rel=1e-12)
    assert M.harmonic_mean([*xs[:8], 0.0]) == 0.0


def test_normalised_probability_and_privleak():
    assert M.normalised_probability(0.5, [0.1, 0.2, 0.2]) == pytest.approx(0.5 / 1.0, rel=1e-9)
    assert M.privleak(0.5, 0.5) == pytest.approx(0.0, abs=1e-6)
    assert M.privleak(1.0, 0.5) == pytest.approx(-100.0, rel=1e-8)
    assert M.privleak(0.3, 0.6) == pytest.approx((0.7 - 0.4) / 0.4 * 100, rel=1e-8)


def test_roc_auc_matches_sklearn_and_pair_counting():
    forget = [0.1, 0.4, 0.35, 0.8, 0.5]
    holdout = [0.5, 0.9, 0.3, 1.2]
    pairs = [(h > f) + 0.5 * (h == f) for f in forget for h in holdout]
    assert M.roc_auc(forget, holdout) == pytest.approx(sum(pairs) / len(pairs))
    labels = [0] * 5 + [1] * 4
    assert M.roc_auc(forget, holdout) == pytest.approx(roc_auc_score(labels, forget + holdout))


def test_rouge_matches_rouge_score_and_lcs_by_hand():
    gt, gen = "The cat sat on the mat.", "the cats on a mat"
    ours = M.rouge(gt, gen)
    ref = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True).score(gt, gen)
    assert ours == {
        "rouge1_recall": ref["rouge1"].recall,
        "rougeL_f1": ref["rougeL"].fmeasure,
        "rougeL_recall": ref["rougeL"].recall,
    }
    # by hand: gt tokens [the cat sat on the mat], gen [the cat on a mat] ("cats" -> "cat");
    # LCS = the cat on mat = 4
    assert ours["rougeL_recall"] == pytest.approx(4 / 6)
    p, r = 4 / 5, 4 / 6
    assert ours["rougeL_f1"] == pytest.approx(2 * p * r / (p + r))
    assert M.rouge("abc", "")["rougeL_f1"] == 0.0


def test_extraction_strength_cases():
    y = [5, 6, 7, 8]
    assert M.extraction_strength(y, y) == 1.0
    assert M.extraction_strength([0, 6, 7, 8], y) == pytest.approx(1 - 1 / 4)
    assert M.extraction_strength([5, 6, 0, 8], y) == pytest.approx(1 - 3 / 4)
    # nothing matches: upstream's loop leaves k* = n-1 -> ES = 1/n; the fix gives 0
    assert M.extraction_strength([0, 0, 0, 0], y) == pytest.approx(1 / 4)
    assert M.extraction_strength([0, 0, 0, 0], y, floor=False) == 0.0
    assert M.extraction_strength([], []) == 0.0
    assert M.exact_memorization([5, 0, 7, 0], y) == 0.5
    assert M.exact_memorization([], []) is None


def test_min_k_and_min_k_plus_plus_by_hand():
    lp = [-0.1, -3.0, -0.5, -2.0, -1.0]  # n=5, k=0.4 -> 2 smallest: -3, -2
    assert M.min_k_score(lp, 0.4) == pytest.approx(2.5)
    assert M.min_k_score([-0.7], 0.4) == pytest.approx(0.7)  # max(1, floor(0.4)) = 1
    assert M.min_k_score([], 0.4) == 0.0
    logits = np.array([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    p = np.exp(logp)
    mu = (p * logp).sum(1)
    var = (p * logp**2).sum(1) - mu**2
    z = M.min_k_pp_z(logp[[0, 1], [0, 2]], mu, var)
    assert z == pytest.approx((logp[[0, 1], [0, 2]] - mu) / np.sqrt(var))


def test_zlib_and_mean_agg():
    text = "hello hello hello world"
    assert M.zlib_score(2.0, text) == pytest.approx(2.0 / len(zlib.compress(text.encode())))
    assert M.mean_agg([[1.0, 3.0], [2.0, 2.0]]) == pytest.approx(2.0)
    assert M.mean_agg([1.0, None, 3.0]) == pytest.approx(2.0)
    assert M.mean_agg([None]) is None
