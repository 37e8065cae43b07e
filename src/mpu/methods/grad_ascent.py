"""GradAscent: L = −CE_θ(B_f) (docs/methods.md). No hyperparameters, no retain term."""

from __future__ import annotations

from dataclasses import dataclass

from mpu.methods.base import Batch, Method, Result
from mpu.methods.common import answer_ce


@dataclass
class GradAscentConfig:
    """Gradient ascent on the forget set."""

    def __post_init__(self) -> None:
        pass


def grad_ascent_loss(model, batch: Batch, ref, hp: GradAscentConfig) -> Result:
    f = batch["forget"]
    loss = -answer_ce(model, f)
    return loss, {"forget_loss": float(loss.detach()), "loss": float(loss.detach())}


METHOD = Method(
    "GradAscent", grad_ascent_loss, GradAscentConfig, rounds_epochs=(1, 10), aliases=("GA",)
)
