"""The experiment's variants: one table from a variant name to the server job it runs.

- **clean**: the client unlearns θ itself (m = 1, no noise, no reparameterization): what a
  trusted server would do, the upper bound;
- **noised**: one perturbed copy (m = 1, no centring, no harmonic denoising), its update mapped
  back and applied to θ: the single-noisy-copy baseline;
- **mpu**: m perturbed copies, harmonic aggregation.

All three use the same client (method, hyperparameters, data order, schedule), so they differ
only by the protocol. New variants (e.g. differentially private updates) are a row here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from mpu.server.config import JobConfig

Variant = Callable[[JobConfig], JobConfig]

VARIANTS: dict[str, Variant] = {
    "clean": lambda s: dataclasses.replace(
        s, copies=1, kappa=0.0, alphas="linspace", reparameterize=False
    ),
    "noised": lambda s: dataclasses.replace(s, copies=1, alphas="linspace"),
    "mpu": lambda s: s,
}
DESCRIPTIONS = {
    "clean": "the client unlearns the exact model (no privacy; the reference result)",
    "noised": "one perturbed copy, its update applied directly (the naive private baseline)",
    "mpu": "m perturbed copies, updates inverted and harmonically averaged",
}


def job_config(variant: str, server: JobConfig) -> JobConfig:
    """The server job of `variant` built from the experiment's server settings."""
    return VARIANTS[variant](server)
