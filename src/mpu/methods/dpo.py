"""IdkDPO: DPO with a refusal as the preferred answer (Rafailov et al. 2023; TOFU idk).

L_f = −(2/β)·mean_b log σ(β(Δ^w_b − Δ^l_b)), win = (q, refusal), lose = (q, answer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from mpu.config import field
from mpu.methods.base import Batch, Method, Result, need_reference, positive
from mpu.methods.common import combine, log_ratio
from mpu.methods.grad_diff import GradDiffConfig


@dataclass
class DPOConfig(GradDiffConfig):
    """Direct preference optimisation towards "I don't know"."""

    beta: float = field(0.1, help="inverse temperature β (DPO.yaml: 0.1; class default 1.0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "beta", self.beta)


def dpo_loss(model, batch: Batch, ref, hp: DPOConfig) -> Result:
    ref = need_reference(ref, "DPO")
    if "alternate" not in batch:
        raise ValueError("DPO needs an 'alternate' sub-batch (IDK or the row's alternates)")
    win = log_ratio(model, ref, batch["alternate"])
    lose = log_ratio(model, ref, batch["forget"])
    lf = -(2.0 / hp.beta) * F.logsigmoid(hp.beta * (win - lose)).mean()
    return combine(lf, batch.get("retain"), model, ref, hp)


METHOD = Method(
    "DPO",
    dpo_loss,
    DPOConfig,
    needs_reference=True,
    needs_retain=True,
    needs_idk=True,
    rounds_epochs=(10, 1),
    aliases=("IdkDPO",),
)
