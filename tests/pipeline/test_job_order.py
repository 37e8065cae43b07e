"""Runs start longest first: MPU (m copies), then Noised (one copy, evaluated and audited),
then Clean (one copy, evaluated, never audited), so no worker idles through a long last run."""

from __future__ import annotations

from mpu.config import load_config
from mpu.pipeline.experiment import ExperimentConfig
from mpu.pipeline.jobs import client_settings, job_cost


def test_mpu_then_noised_then_clean_for_every_method():
    cfg = load_config(
        ExperimentConfig,
        mapping={"methods": ["NPO", "GradDiff"], "server": {"copies": 4}, "data": "d"},
    )
    settings = {m: client_settings(cfg, m, 1_000_000) for m in cfg.methods}
    names = [f"{m}-{v}" for m in cfg.methods for v in ("clean", "noised", "mpu")]
    order = sorted(names, key=lambda n: job_cost(n, cfg.server, settings), reverse=True)
    variants = [n.rsplit("-", 1)[1] for n in order]
    assert variants == ["mpu", "mpu", "noised", "noised", "clean", "clean"], order
    # NPO scores a reference model: its runs cost more than GradDiff's of the same variant
    assert order.index("NPO-mpu") < order.index("GradDiff-mpu")
