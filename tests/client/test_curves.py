"""Training curves: every client run writes its per-step records beside its delta, and with
report_to=tensorboard event files that TensorBoard's own reader loads back."""

from __future__ import annotations

import importlib.util

import pytest

from mpu.client.curves import read_jsonl
from mpu.client.train_config import ClientTrainConfig
from mpu.errors import ConfigError
from toolkit import publish_job, unlearn_copies

pytestmark = pytest.mark.slow


def test_each_run_writes_its_steps_as_jsonl_and_tensorboard_events(tofu_world, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, copies = publish_job(tofu_world, tmp_path)
    deltas = unlearn_copies(tofu_world, copies[:1], tmp_path, report_to="tensorboard", epochs=3)
    out = deltas[0].parent
    steps = read_jsonl(out / "curves.jsonl")
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1)) and len(steps) == 6
    for rec in steps:
        assert {"epoch", "loss", "forget_loss", "lr", "grad_norm", "tokens"} <= set(rec)
        assert rec["tokens"] > 0 and rec["grad_norm"] > 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "train/loss",
        "train/forget_loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens",
    } <= tags
    read_back = events.Scalars("train/forget_loss")
    assert [e.step for e in read_back] == [r["step"] for r in steps]
    # TensorBoard stores scalars as float32
    for e, rec in zip(read_back, steps, strict=True):
        assert e.value == pytest.approx(rec["forget_loss"], rel=2**-23)


def test_report_to_must_be_known_and_installed(monkeypatch):
    with pytest.raises(ConfigError, match="report_to='wandb': expected one of none, tensorboard"):
        ClientTrainConfig(method="NPO", report_to="wandb")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))  # fmt: skip
    with pytest.raises(ConfigError, match=r"pip install 'mpu\[tensorboard\]'"):
        ClientTrainConfig(method="NPO", report_to="tensorboard")
