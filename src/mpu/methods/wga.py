"""WGA, weighted gradient ascent (Wang et al. 2025, arXiv 2502.19301): L_f = −⟨sg(p^β) ℓ⟩_A."""

from __future__ import annotations

from dataclasses import dataclass

from mpu.config import field
from mpu.methods.base import Batch, Method, Result, positive
from mpu.methods.common import combine, weighted_ascent
from mpu.methods.grad_diff import GradDiffConfig


@dataclass
class WGAConfig(GradDiffConfig):
    """Weighted gradient ascent, w = p^β."""

    beta: float = field(1.0, help="exponent β of the token weight p^β (WGA.yaml: 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "beta", self.beta, allow_zero=True)


def wga_loss(model, batch: Batch, ref, hp: WGAConfig) -> Result:
    lf = weighted_ascent(model, batch["forget"], lambda p: p**hp.beta)
    return combine(lf, batch.get("retain"), model, ref, hp)


METHOD = Method("WGA", wga_loss, WGAConfig, needs_retain=True, rounds_epochs=(2, 5))
