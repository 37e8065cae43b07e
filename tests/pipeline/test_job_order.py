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


def test_clean_is_the_whole_exact_model_even_when_the_experiment_uses_an_emulator():
    """An emulator is a protection setting like κ: Clean (the reference every variant is
    measured against) unlearns all of θ, while Noised and MPU keep the experiment's emulator."""
    from mpu.pipeline.variants import job_config
    from mpu.server.config import JobConfig

    server = JobConfig(kappa=0.1, emulator="layer_drop", emulator_drop=4,
                       emulator_distill_steps=300)  # fmt: skip
    clean = job_config("clean", server)
    assert (clean.emulator, clean.emulator_drop, clean.emulator_distill_steps) == ("off", 0, 0)
    assert (clean.kappa, clean.copies, clean.reparameterize) == (0.0, 1, False)
    for variant in ("noised", "mpu"):
        job = job_config(variant, server)
        assert (job.emulator, job.emulator_drop, job.emulator_distill_steps) == (
            "layer_drop",
            4,
            300,
        )


def test_every_variant_builds_from_a_server_with_two_noise_lines():
    """`server.lines=2` is MPU's design: one copy (Clean, Noised) has one line, and the paper's
    harmonic variants have none; each must still build (a copy count the lines cannot split
    would be refused)."""
    from mpu.pipeline.variants import VARIANTS, job_config
    from mpu.server.config import JobConfig

    server = JobConfig(kappa=0.1, copies=4, lines=2)
    built = {v: job_config(v, server) for v in VARIANTS}
    assert {v: j.lines for v, j in built.items()} == {
        "clean": 1, "noised": 1, "mpu": 2, "mpu_paper": 1, "mpu_uniform": 1, "dp": 2}  # fmt: skip
