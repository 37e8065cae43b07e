"""GradDiff: L = γ·(−CE_θ(B_f)) + α·L_r. Its config is the base of every retain-weighted method."""

from __future__ import annotations

from dataclasses import dataclass

from mpu.config import field
from mpu.errors import ConfigError
from mpu.methods.base import Batch, Method, Result, positive
from mpu.methods.common import answer_ce, combine

RETAIN_LOSS_TYPES = ("NLL", "KL")


@dataclass
class GradDiffConfig:
    """Gradient difference (OpenUnlearning `GradDiff.yaml`)."""

    gamma: float = field(1.0, help="weight γ of the forget loss")
    alpha: float = field(1.0, help="weight α of the retain loss (not MPU's noise scale α_k)")
    retain_loss_type: str = field(
        "NLL", help="retain loss: NLL (CE on the retain batch) or KL (to the reference model)"
    )

    def __post_init__(self) -> None:
        positive(self, "gamma", self.gamma, allow_zero=True)
        positive(self, "alpha", self.alpha, allow_zero=True)
        if self.retain_loss_type not in RETAIN_LOSS_TYPES:
            raise ConfigError(
                f"{type(self).__name__}.retain_loss_type={self.retain_loss_type!r}: "
                f"choose one of {', '.join(RETAIN_LOSS_TYPES)}"
            )


def grad_diff_loss(model, batch: Batch, ref, hp: GradDiffConfig) -> Result:
    f = batch["forget"]
    lf = -answer_ce(model, f)
    return combine(lf, batch.get("retain"), model, ref, hp)


METHOD = Method(
    "GradDiff", grad_diff_loss, GradDiffConfig, needs_retain=True, rounds_epochs=(1, 10)
)
