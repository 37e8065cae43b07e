"""SatImp (Yang et al. 2025, arXiv 2505.11953): L_f = −⟨sg(p^β1 (1−p)^β2) ℓ⟩_A."""

from __future__ import annotations

from dataclasses import dataclass

from mpu.config import field
from mpu.methods.base import Batch, Method, Result, positive
from mpu.methods.common import combine, weighted_ascent
from mpu.methods.grad_diff import GradDiffConfig


@dataclass
class SatImpConfig(GradDiffConfig):
    """Saturation-importance token weighting."""

    beta1: float = field(5.0, help="exponent on p (saturation), SatImp.yaml: 5")
    beta2: float = field(1.0, help="exponent on 1−p (importance), SatImp.yaml: 1")
    gamma: float = field(0.1, help="forget weight γ (SatImp.yaml 0.1; the MPU client ran 1.0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "beta1", self.beta1, allow_zero=True)
        positive(self, "beta2", self.beta2, allow_zero=True)


def satimp_loss(model, batch: Batch, ref, hp: SatImpConfig) -> Result:
    lf = weighted_ascent(model, batch["forget"], lambda p: p**hp.beta1 * (1 - p) ** hp.beta2)
    return combine(lf, batch.get("retain"), model, ref, hp)


METHOD = Method(
    "SatImp",
    satimp_loss,
    SatImpConfig,
    needs_retain=True,
    rounds_epochs=(10, 1),
    paper={"gamma": 1.0},
)
