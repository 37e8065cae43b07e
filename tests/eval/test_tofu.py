"""TOFU suite on a tiny random Llama: keys, dependencies and aggregates recomputed by hand."""

from __future__ import annotations

import json
import math

import pytest
from scipy.stats import hmean
from sklearn.metrics import roc_auc_score
from tofu_data import tofu_rows

from mpu.errors import ConfigError, DataError
from mpu.eval.io import read_eval_log, write_eval
from mpu.eval.tofu import DEFAULT_METRICS, MODEL_UTILITY_KEYS, evaluate_tofu
from toolkit import eval_model

EXPECTED_KEYS = {
    *DEFAULT_METRICS,
    *MODEL_UTILITY_KEYS,
    "forget_Q_A_PARA_Prob",
    "forget_Q_A_PERT_Prob",
    "retain_Q_A_PARA_Prob",
    "retain_Q_A_PERT_Prob",
    "ra_Q_A_Prob",
    "ra_Q_A_PERT_Prob",
    "wf_Q_A_Prob",
    "wf_Q_A_PERT_Prob",
    "mia_min_k",
}


@pytest.fixture(scope="module")
def data():
    return tofu_rows()


@pytest.fixture(scope="module")
def results(model, tokenizer, data):
    return evaluate_tofu(model, tokenizer, data, max_new_tokens=8, batch_size=4)


def test_keys_and_schema(results, tokenizer):
    assert set(results) == EXPECTED_KEYS | {"_meta"}
    # the prompt format is recorded with the results (it decides the tokens that were scored)
    assert results["_meta"]["prompt_format"]["template"] == "chat"
    for key in ("forget_quality", "model_utility", "privleak"):
        assert set(results[key]) == {"agg_value"}
    assert results["forget_quality"]["agg_value"] is None  # no retain logs
    rouge = results["forget_Q_A_ROUGE"]["value_by_index"][0]
    assert set(rouge) == {
        "rouge1_recall",
        "rougeL_f1",
        "rougeL_recall",
        "input",
        "ground_truth",
        "generation",
    }
    pert = results["forget_Q_A_PERT_Prob"]["value_by_index"][0]
    assert len(pert["prob"]) == len(pert["avg_loss"]) == 3


def test_aggregates_recomputed_by_hand(results):
    vbi = results["forget_Q_A_Prob"]["value_by_index"]
    assert all(v["prob"] == pytest.approx(math.exp(-v["avg_loss"])) for v in vbi.values())
    assert results["forget_Q_A_Prob"]["agg_value"] == pytest.approx(
        sum(v["prob"] for v in vbi.values()) / len(vbi)
    )
    para = results["forget_Q_A_PARA_Prob"]["value_by_index"]
    pert = results["forget_Q_A_PERT_Prob"]["value_by_index"]
    trs = []
    for i in para:
        tr = math.exp(-sum(pert[i]["avg_loss"]) / 3) / (math.exp(-para[i]["avg_loss"]) + 1e-10)
        assert results["forget_truth_ratio"]["value_by_index"][i]["score"] == pytest.approx(tr)
        trs.append(tr)
    assert results["forget_truth_ratio"]["agg_value"] == pytest.approx(
        sum(min(t, 1 / t) for t in trs) / len(trs)
    )
    ra, ra_pert = (
        results["ra_Q_A_Prob"]["value_by_index"],
        results["ra_Q_A_PERT_Prob"]["value_by_index"],
    )
    norm = [ra[i]["prob"] / (ra[i]["prob"] + sum(ra_pert[i]["prob"])) for i in ra]
    assert results["ra_Q_A_Prob_normalised"]["agg_value"] == pytest.approx(sum(norm) / len(norm))
    retain_tr = [v["score"] for v in results["retain_Truth_Ratio"]["value_by_index"].values()]
    assert results["retain_Truth_Ratio"]["agg_value"] == pytest.approx(
        sum(max(0, 1 - t) for t in retain_tr) / len(retain_tr)
    )
    nine = [results[k]["agg_value"] for k in MODEL_UTILITY_KEYS]
    assert results["model_utility"]["agg_value"] == pytest.approx(hmean(nine))
    mia = results["mia_min_k"]
    scores = [v["score"] for v in mia["forget"]["value_by_index"].values()]
    scores += [v["score"] for v in mia["holdout"]["value_by_index"].values()]
    assert mia["auc"] == pytest.approx(roc_auc_score([0] * 6 + [1] * 6, scores))
    assert results["privleak"]["agg_value"] == pytest.approx(((1 - mia["auc"]) - 0.5) / 0.5 * 100)


def test_retain_logs_roundtrip_gives_fq_1_and_privleak_0(model, tokenizer, data, results, tmp_path):
    eval_path, summary_path = write_eval(
        results, tmp_path / "TOFU_EVAL.json", summary_keys=DEFAULT_METRICS
    )
    assert summary_path.name == "TOFU_SUMMARY.json"
    summary = json.loads(summary_path.read_text())
    assert set(summary) == set(DEFAULT_METRICS)
    logs = read_eval_log(eval_path)
    assert list(logs["forget_truth_ratio"]["value_by_index"]) == [str(i) for i in range(6)]
    again = evaluate_tofu(
        model,
        tokenizer,
        data,
        max_new_tokens=8,
        batch_size=3,
        retain_logs=logs,
        metrics=["forget_quality", "privleak"],
    )
    assert again["forget_quality"]["agg_value"] == pytest.approx(1.0)
    assert again["privleak"]["agg_value"] == pytest.approx(0.0, abs=1e-5)
    # reuse: a previous log's per-item results are taken as they are (even for another model),
    # aggregates that depend on the retain logs are recomputed
    other = eval_model(tokenizer, seed=7)
    reused = evaluate_tofu(
        other,
        tokenizer,
        data,
        retain_logs=logs,
        precomputed=logs,
        metrics=["forget_Q_A_Prob", "forget_quality"],
    )
    assert reused["forget_Q_A_Prob"]["agg_value"] == results["forget_Q_A_Prob"]["agg_value"]
    assert 0 in reused["forget_Q_A_Prob"]["value_by_index"]  # item keys back to ints
    assert reused["forget_quality"]["agg_value"] == pytest.approx(1.0)
    fresh = evaluate_tofu(other, tokenizer, data, metrics=["forget_Q_A_Prob"])
    assert fresh["forget_Q_A_Prob"]["agg_value"] != pytest.approx(
        results["forget_Q_A_Prob"]["agg_value"]
    )


def test_paraphrased_question_variant_changes_forget_not_ra(model, tokenizer, data, results):
    para = evaluate_tofu(
        model,
        tokenizer,
        data,
        question_key="paraphrased_question",
        metrics=["forget_Q_A_Prob", "ra_Q_A_Prob"],
    )
    assert para["forget_Q_A_Prob"]["agg_value"] != pytest.approx(
        results["forget_Q_A_Prob"]["agg_value"]
    )
    assert para["ra_Q_A_Prob"]["agg_value"] == pytest.approx(
        results["ra_Q_A_Prob"]["agg_value"], rel=1e-5
    )


def test_bad_retain_logs_are_refused(model, tokenizer, data, results, tmp_path):
    other = tmp_path / "MUSE_EVAL.json"
    other.write_text(json.dumps({"forget_knowmem_ROUGE": {"agg_value": 0.1}}))
    with pytest.raises(DataError, match=r"MUSE_EVAL.json.*no metric 'forget_truth_ratio'"):
        evaluate_tofu(
            model, tokenizer, data, retain_logs=read_eval_log(other), metrics=["forget_quality"]
        )
    short = json.loads(json.dumps(results, default=float))
    short["forget_truth_ratio"]["value_by_index"].pop("0")
    path = tmp_path / "short.json"
    path.write_text(json.dumps(short))
    with pytest.raises(DataError, match=r"short.json.*covers 5 items but this evaluation has 6"):
        evaluate_tofu(
            model, tokenizer, data, retain_logs=read_eval_log(path), metrics=["forget_quality"]
        )
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a JSON"):
        read_eval_log(path)


def test_empty_split_and_unknown_metric(model, tokenizer, data):
    empty = {**data, "forget10_perturbed": []}
    with pytest.raises(DataError, match=r"forget10_perturbed.*empty"):
        evaluate_tofu(model, tokenizer, empty, metrics=["forget_Q_A_Prob"])
    missing = {k: v for k, v in data.items() if k != "holdout10"}
    with pytest.raises(DataError, match="holdout10"):
        evaluate_tofu(model, tokenizer, missing, metrics=["privleak"])
    with pytest.raises(ConfigError, match="unknown TOFU metric"):
        evaluate_tofu(model, tokenizer, data, metrics=["forget_bleu"])
    with pytest.raises(DataError, match="tokenizer"):
        evaluate_tofu(model, None, data, metrics=["forget_Q_A_Prob"])


def test_progress_false_draws_no_bars_and_changes_nothing(model, tokenizer, data, results, capfd):
    metrics = ["forget_Q_A_ROUGE", "privleak", "forget_Q_A_Prob"]  # generation, MIA, scoring
    quiet = evaluate_tofu(
        model, tokenizer, data, metrics=metrics, max_new_tokens=8, batch_size=4, progress=False
    )
    assert "item/s" not in capfd.readouterr().err
    for key in metrics:
        assert quiet[key]["agg_value"] == pytest.approx(results[key]["agg_value"])
    evaluate_tofu(model, tokenizer, data, metrics=["forget_Q_A_Prob"], batch_size=4)
    assert "forget_Q_A_Prob" in capfd.readouterr().err  # the default still shows progress
