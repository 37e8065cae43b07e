"""NPO (Zhang et al. 2024, arXiv 2404.05868): L_f = −(2/β)·mean_b log σ(−β Δ_b).

Δ_b = log π_θ(b) − log π_ref(b) over the answer tokens; the NPO paper's form, not MUSE's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from mpu.config import field
from mpu.methods.base import Batch, Method, Result, need_reference, positive
from mpu.methods.common import combine, log_ratio
from mpu.methods.grad_diff import GradDiffConfig


@dataclass
class NPOConfig(GradDiffConfig):
    """Negative preference optimization."""

    beta: float = field(
        0.1, help="inverse temperature β (NPO.yaml and the MPU client: 0.1; class default 1.0)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "beta", self.beta)


def npo_loss(model, batch: Batch, ref, hp: NPOConfig) -> Result:
    ref = need_reference(ref, "NPO")
    delta = log_ratio(model, ref, batch["forget"])
    lf = -(2.0 / hp.beta) * F.logsigmoid(-hp.beta * delta).mean()
    return combine(lf, batch.get("retain"), model, ref, hp)


METHOD = Method(
    "NPO", npo_loss, NPOConfig, needs_reference=True, needs_retain=True, rounds_epochs=(2, 5)
)
