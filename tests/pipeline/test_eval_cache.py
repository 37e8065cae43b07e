"""Evaluations shared between run folders: a hit computes nothing and gives the same log; any
change to the model's files is a miss; a damaged entry is recomputed, not trusted."""

from __future__ import annotations

import shutil

import pytest

from mpu.pipeline.evaluation import evaluate_run
from mpu.pipeline.experiment import ExperimentConfig


@pytest.fixture
def cfg(monkeypatch, tmp_path):
    monkeypatch.setenv("MPU_CACHE", str(tmp_path / "cache"))
    return ExperimentConfig(
        forget_split="forget01", eval_limit=3, eval_max_new_tokens=6, progress=False
    )


def _log(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "_source"}  # the file it was read from


def _no_model_calls(monkeypatch):
    from mpu.eval import suite

    def refuse(*a, **k):
        raise AssertionError("the model was run although the evaluation was cached")

    monkeypatch.setattr(suite, "score_items", refuse)
    monkeypatch.setattr(suite, "greedy_generate", refuse)


def test_a_second_run_folder_reuses_the_evaluation(tofu_world, cfg, tmp_path, monkeypatch):
    data, models = tofu_world
    first, seconds = evaluate_run(cfg, tmp_path / "a", "target", models / "target", str(data), None)
    assert seconds > 0 and list((tmp_path / "cache" / "evals").rglob("TOFU_EVAL.json"))
    _no_model_calls(monkeypatch)
    again, _ = evaluate_run(cfg, tmp_path / "b", "target", models / "target", str(data), None)
    assert _log(again) == _log(first)
    assert (tmp_path / "b" / "eval" / "target" / "TOFU_EVAL.json").is_file()


def test_changed_files_or_settings_miss(tofu_world, cfg, tmp_path, monkeypatch):
    data, models = tofu_world
    evaluate_run(cfg, tmp_path / "a", "target", models / "target", str(data), None)
    _no_model_calls(monkeypatch)
    other = tmp_path / "other"
    shutil.copytree(models / "target", other)
    (other / "generation_config.json").write_text('{"eos_token_id": 2}')
    with pytest.raises(AssertionError, match="was run"):
        evaluate_run(cfg, tmp_path / "b", "target", other, str(data), None)
    cfg.eval_max_new_tokens = 7
    with pytest.raises(AssertionError, match="was run"):
        evaluate_run(cfg, tmp_path / "c", "target", models / "target", str(data), None)


def test_a_damaged_entry_is_recomputed(tofu_world, cfg, tmp_path, caplog):
    data, models = tofu_world
    first, _ = evaluate_run(cfg, tmp_path / "a", "target", models / "target", str(data), None)
    (entry,) = (tmp_path / "cache" / "evals").rglob("TOFU_EVAL.json")
    entry.write_text(entry.read_text()[:100])
    again, seconds = evaluate_run(cfg, tmp_path / "b", "target", models / "target", str(data), None)
    assert seconds > 0 and _log(again) == _log(first)
    assert "damaged cached evaluation" in caplog.text


def test_the_cache_can_be_turned_off(tofu_world, cfg, tmp_path):
    data, models = tofu_world
    cfg.eval_cache = False
    evaluate_run(cfg, tmp_path / "a", "target", models / "target", str(data), None)
    assert not (tmp_path / "cache" / "evals").exists()
