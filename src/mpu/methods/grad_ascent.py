"""GradAscent: L = −CE_θ(B_f) (docs/methods.md). No hyperparameters, no retain term."""

from __future__ import annotations

from dataclasses import dataclass

from mpu.methods.base import Batch, Method, Result
from mpu.methods.common import batch_ce, forward_logits


@dataclass
class GradAscentConfig:
    """Gradient ascent on the forget set."""

    def __post_init__(self) -> None:
        pass


def grad_ascent_loss(model, batch: Batch, ref, hp: GradAscentConfig) -> Result:
    f = batch["forget"]
    loss = -batch_ce(forward_logits(model, f), f["labels"])
    return loss, {"forget_loss": float(loss.detach()), "loss": float(loss.detach())}


METHOD = Method(
    "GradAscent", grad_ascent_loss, GradAscentConfig, rounds_epochs=(1, 10), aliases=("GA",)
)
