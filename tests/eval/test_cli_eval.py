"""`mpu eval` end to end on a saved tiny model folder and a data folder; bad inputs fail clearly."""

from __future__ import annotations

import json
import shutil

import pytest
from tofu_data import tofu_rows

from mpu.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, model, tokenizer):
    path = tmp_path_factory.mktemp("model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    for config, rows in tofu_rows().items():
        (path / config).mkdir()
        with (path / config / "train.jsonl").open("w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    (path / "manifest.json").write_text(json.dumps({"benchmark": "tofu"}))
    return path


def test_mpu_eval_writes_openunlearning_schema(model_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "run" / "TOFU_EVAL.json"
    rc = main(
        ["eval", "--model", str(model_dir), "--data", str(data_dir), "--benchmark", "tofu",
         "--out", str(out), "--batch-size", "4", "--metrics",
         "forget_Q_A_Prob,forget_truth_ratio,forget_quality,privleak,extraction_strength"]
    )  # fmt: skip
    assert rc == 0
    res = json.loads(out.read_text())
    assert list(res) == sorted(res)
    assert set(res["forget_Q_A_Prob"]) == {"agg_value", "value_by_index"}
    assert set(res["forget_Q_A_Prob"]["value_by_index"]["0"]) == {"prob", "avg_loss"}
    assert set(res["mia_min_k"]) == {"forget", "holdout", "auc", "agg_value"}
    summary = json.loads((out.parent / "TOFU_SUMMARY.json").read_text())
    assert summary["forget_quality"] is None
    assert summary["forget_Q_A_Prob"] == res["forget_Q_A_Prob"]["agg_value"]
    # the written log is reusable as a retain log: comparing a model with itself gives FQ = 1
    out2 = tmp_path / "again.json"
    rc = main(
        ["eval", "--model", str(model_dir), "--data", str(data_dir), "--out", str(out2),
         "--retain-logs", str(out), "--metrics", "forget_quality,privleak"]
    )  # fmt: skip
    assert rc == 0
    summary2 = json.loads((tmp_path / "again_SUMMARY.json").read_text())
    assert summary2["forget_quality"] == pytest.approx(1.0)
    assert summary2["privleak"] == pytest.approx(0.0, abs=1e-5)


def _fails(argv, capsys) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_bad_inputs_give_one_line_errors(model_dir, data_dir, tmp_path, capsys):
    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(model_dir, no_tok)
    for f in no_tok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template")):
            f.unlink()
    base = ["eval", "--data", str(data_dir), "--out", str(tmp_path / "x.json")]
    err = _fails([*base, "--model", str(no_tok)], capsys)
    assert "no_tokenizer" in err and "no tokenizer" in err
    bad_log = tmp_path / "MUSE_EVAL.json"
    bad_log.write_text(json.dumps({"mia_min_k": {"agg_value": 0.5}}))
    err = _fails([*base, "--model", str(model_dir), "--retain-logs", str(bad_log)], capsys)
    assert "MUSE_EVAL.json" in err and "forget_truth_ratio" in err
    err = _fails([*base, "--model", str(model_dir), "--benchmark", "muse"], capsys)
    assert "manifest.json" in err and "tofu" in err
    empty = tmp_path / "empty_data"
    shutil.copytree(data_dir, empty)
    (empty / "forget10_perturbed" / "train.jsonl").write_text("")
    err = _fails(["eval", "--data", str(empty), "--out", str(tmp_path / "y.json"),
                  "--model", str(model_dir), "--metrics", "forget_Q_A_Prob"], capsys)  # fmt: skip
    assert "forget10_perturbed" in err and "empty" in err
    err = _fails([*base, "--model", str(model_dir), "--set", "attention_mask=sometimes"], capsys)
    assert "attention_mask" in err
