"""SimNPO (Fan et al. 2024, arXiv 2410.07163): L_f = −(2/β)·mean_b log σ(β(NLL_θ(b)/n_b − δ)).

Reference-free, length-normalised NPO; δ sits inside the β product (paper margin = β·δ).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from mpu.config import field
from mpu.methods.base import Batch, Method, Result, positive
from mpu.methods.common import answer_token_nll, combine
from mpu.methods.grad_diff import GradDiffConfig


@dataclass
class SimNPOConfig(GradDiffConfig):
    """Simple NPO."""

    beta: float = field(4.5, help="inverse temperature β (SimNPO.yaml; class default 1.0)")
    delta: float = field(0.0, help="margin δ, inside the β product (paper margin = β·δ)")
    gamma: float = field(0.125, help="forget weight γ (SimNPO.yaml 0.125; the MPU client ran 1.0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "beta", self.beta)


def simnpo_loss(model, batch: Batch, ref, hp: SimNPOConfig) -> Result:
    f = batch["forget"]
    nll, mask = answer_token_nll(model, f)
    n = mask.sum(-1).clamp_min(1)
    lf = -(2.0 / hp.beta) * F.logsigmoid(hp.beta * (nll.sum(-1) / n - hp.delta)).mean()
    return combine(lf, batch.get("retain"), model, ref, hp)


METHOD = Method(
    "SimNPO",
    simnpo_loss,
    SimNPOConfig,
    needs_retain=True,
    rounds_epochs=(10, 1),
    paper={"gamma": 1.0},
)
