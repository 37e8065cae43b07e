"""The experiment's variants: one table from a variant name to the server job it runs and
whether its client releases differentially private updates.

- **clean**: the client unlearns θ itself (m = 1, no noise, no reparameterization, no
  emulator): what a trusted server would do, the upper bound;
- **noised**: one perturbed copy (m = 1, no centring, no harmonic denoising), its update mapped
  back and applied to θ: the single-noisy-copy baseline;
- **mpu**: m perturbed copies aggregated with the job's weights (by default copies on one noise
  line, extrapolated to zero noise);
- **mpu_paper**: the paper's MPU at the same m: zero-sum noise, α = linspace(1, 2), harmonic
  weights, continuous rotations (the baseline the default is measured against);
- **mpu_uniform**: the paper's noise with equal weights (the harmonic weights' ablation);
- **dp**: MPU whose client clips and noises every update (`dp.*` settings; ε from opacus).

All use the same client (method, hyperparameters, data order, schedule), so they differ only
by the protocol. A new variant is a row here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from mpu.server.config import JobConfig

# Clean is the whole exact model: an emulator (a protection setting) stays off there
NO_EMULATOR = {"emulator": "off", "emulator_drop": 0, "emulator_stride": 2,
               "emulator_distill_steps": 0, "emulator_distilled_from": ""}  # fmt: skip


@dataclass(frozen=True)
class Variant:
    job: Callable[[JobConfig], JobConfig]
    description: str
    dp: bool = False


VARIANTS: dict[str, Variant] = {
    "clean": Variant(
        lambda s: dataclasses.replace(
            s,
            copies=1,
            lines=1,
            kappa=0.0,
            alphas="linspace",
            reparameterize=False,
            **NO_EMULATOR,
        ),
        "the client unlearns the exact model (no privacy; the reference result)",
    ),
    "noised": Variant(
        lambda s: dataclasses.replace(s, copies=1, lines=1, alphas="auto"),
        "one perturbed copy, its update applied directly (the naive private baseline)",
    ),
    "mpu": Variant(
        lambda s: s,
        "m perturbed copies, updates inverted and combined with the job's weights "
        "(default: extrapolated to zero noise)",
    ),
    "mpu_paper": Variant(
        lambda s: dataclasses.replace(
            s, aggregation="harmonic", alphas="linspace", angles="continuous", lines=1
        ),
        "the paper's MPU: zero-sum noise, α = linspace(1, 2), harmonic weights, continuous maps",
    ),
    "mpu_uniform": Variant(
        lambda s: dataclasses.replace(s, aggregation="uniform", alphas="linspace", lines=1),
        "MPU with equal weights 1/m instead of the harmonic ones (the ablation)",
    ),
    # DP noise is meant to be large: the per-tensor size bound would refuse it
    "dp": Variant(
        lambda s: dataclasses.replace(s, max_update_ratio=0.0),
        "MPU with differentially private client updates (clipped, Gaussian noise)",
        dp=True,
    ),
}
DESCRIPTIONS = {name: v.description for name, v in VARIANTS.items()}


def job_config(variant: str, server: JobConfig) -> JobConfig:
    """The server job of `variant` built from the experiment's server settings."""
    return VARIANTS[variant].job(server)
