"""`prepare_models` / `mpu model prepare` end to end on a tiny data set and a tiny model."""

from __future__ import annotations

import json

import pytest

from mpu.cli import main
from mpu.config import load_config
from mpu.data.store import write_dataset
from mpu.data.synth_tofu import generate_tofu, idk_answers
from mpu.errors import ConfigError
from mpu.pipeline.prepare import PrepareConfig, content_hash, prepare_models


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tofu100") / "data"
    write_dataset(root, "tofu", generate_tofu(seed=1, n_authors=100), seed=1,
                  generator_version="test", idk=idk_answers())  # fmt: skip
    return root


def _config(data_dir, out, **kw) -> PrepareConfig:
    base = dict(
        data=str(data_dir), out=str(out), forget_split="forget01", max_retain_items=40,
        epochs=1, base_epochs=1, replay=False, vocab_size=512, hidden_size=32, num_layers=1,
        progress=False,
    )  # fmt: skip
    return load_config(PrepareConfig, mapping={**base, **kw})


@pytest.mark.slow
def test_prepare_writes_loadable_models_and_caches(data_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "models"
    record = prepare_models(_config(data_dir, out))
    printed = capsys.readouterr().out
    assert "forget answer prob" in printed and "time:" in printed
    for name in ("base", "target", "retain"):
        tok = AutoTokenizer.from_pretrained(out / name)
        model = AutoModelForCausalLM.from_pretrained(out / name)
        assert (out / name / "model.safetensors").is_file()
        assert tok.chat_template and tok.pad_token_id is not None
        assert model.config.vocab_size == len(tok)
    saved = json.loads((out / "prepare.json").read_text())
    assert saved["forget_split"] == "forget01" and saved["retain_split"] == "retain99"
    assert saved["train_rows"] == {"target": 60, "retain": 40, "replay": 0}
    for model in ("target", "retain"):
        s = saved["summary"][model]
        assert 0 < s["forget_prob"] < 1 and 0 <= s["forget_exact_memorization"] <= 1
        assert len(saved["forget_truth_ratios"][model]) == 20
    assert saved["summary"]["retain"]["forget_quality"] == 1.0
    assert set(saved["timings_s"]) >= {"base", "target", "retain", "total"}
    # second call: same data + config -> cached, nothing retrained
    mtime = (out / "target" / "model.safetensors").stat().st_mtime
    again = prepare_models(_config(data_dir, out))
    assert "cached" in capsys.readouterr().out
    assert again["content_hash"] == record["content_hash"]
    assert (out / "target" / "model.safetensors").stat().st_mtime == mtime


def test_hash_depends_on_data_and_config(data_dir, tmp_path):
    cfg = _config(data_dir, tmp_path)
    data = {"full": [{"question": "q", "answer": "a"}]}
    h = content_hash(data, cfg)
    assert h == content_hash(data, _config(data_dir, tmp_path / "elsewhere"))  # out not hashed
    assert h != content_hash(data, _config(data_dir, tmp_path, epochs=2))
    assert h != content_hash({"full": [{"question": "q", "answer": "b"}]}, cfg)


def test_config_validation(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="forget_split"):
        _config(data_dir, tmp_path, forget_split="forget7")
    with pytest.raises(ConfigError, match="epochs"):
        _config(data_dir, tmp_path, epochs=0)
    assert _config(data_dir, tmp_path, forget_split="forget05").retain_split == "retain95"


def test_cli_errors_are_one_line(data_dir, tmp_path, capsys):
    assert main(["model", "prepare", "--data", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert "no such folder" in capsys.readouterr().err
    code = main(["model", "prepare", "--data", str(data_dir), "--out", str(tmp_path), "bogus=1"])
    assert code == 2 and "bogus" in capsys.readouterr().err
    assert main(["data", "make", "wmdp", "--out", str(tmp_path / "w"), "--seed", "2"]) == 0
    assert json.loads((tmp_path / "w" / "manifest.json").read_text())["seed"] == 2
