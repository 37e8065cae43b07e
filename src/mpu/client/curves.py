"""Training curves: every client run's per-step records, as JSONL beside its delta and, with
`report_to=tensorboard` (the Hugging Face Trainer's name for it), as TensorBoard event files.

A record is one optimizer step: `step`, `epoch`, `loss` and each loss term the method reports
(`forget_loss`, `retain_loss`, …), `lr`, `grad_norm` (before clipping) and `tokens` (the
non-padding tokens the step trained on). The forget loss rising while the retain loss holds is
the first thing to look at when an unlearning run misbehaves.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from mpu.errors import ConfigError
from mpu.io.jsonl import read_jsonl, write_jsonl

__all__ = ["CURVES_FILE", "REPORT_TO", "check_report_to", "read_jsonl", "write_curves",
           "write_jsonl", "write_tensorboard"]  # fmt: skip

REPORT_TO = ("none", "tensorboard")
CURVES_FILE = "curves.jsonl"


def check_report_to(value: str) -> None:
    """`report_to` must name a known sink, and the sink's package must be installed."""
    if value not in REPORT_TO:
        raise ConfigError(f"report_to={value!r}: expected one of {', '.join(REPORT_TO)}")
    if value == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "report_to=tensorboard needs the tensorboard package: pip install 'mpu[tensorboard]'"
        )


def write_tensorboard(folder: Path, steps: Sequence[dict]) -> Path:
    """The records as TensorBoard scalars `train/<name>` against the global step."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    try:
        for rec in steps:
            for key, value in rec.items():
                if key not in ("step", "epoch") and isinstance(value, int | float):
                    writer.add_scalar(f"train/{key}", value, global_step=int(rec["step"]))
    finally:
        writer.close()
    return folder


def write_curves(out: Path, steps: Sequence[dict], report_to: str) -> list[Path]:
    """Everything a run records of its curves, into its output folder."""
    written = [write_jsonl(out / CURVES_FILE, steps)]
    if report_to == "tensorboard":
        written.append(write_tensorboard(out / "tensorboard", steps))
    return written
