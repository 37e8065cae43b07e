"""UNDIAL (Dong et al. 2024, arXiv 2402.10052): distil from the teacher's logits with the
target token pushed down by β.

`undial_mask='all'` averages over all B·(T−1) shifted positions and, like upstream, lets the
label −100 index the vocabulary from the end (id V−100); `'answer'` averages over answer
positions only (the MPU reference client).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpu.config import field
from mpu.errors import ConfigError
from mpu.methods.base import Batch, Method, Result, need_reference, positive
from mpu.methods.common import combine, forward_logits, reference_logits, shifted
from mpu.methods.grad_diff import GradDiffConfig
from mpu.text import IGNORE_INDEX


@dataclass
class UNDIALConfig(GradDiffConfig):
    """Self-distillation with adjusted logits."""

    beta: float = field(10.0, help="logit penalty β on the target token (UNDIAL.yaml: 10)")
    alpha: float = field(0.0, help="retain weight α (UNDIAL.yaml 0.0; the MPU client ran 1.0)")
    undial_mask: str = field(
        "all",
        help="positions averaged: 'all' B·(T−1) shifted positions (OpenUnlearning) or "
        "'answer' positions only (MPU client)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        positive(self, "beta", self.beta, allow_zero=True)
        if self.undial_mask not in ("all", "answer"):
            raise ConfigError(f"UNDIALConfig.undial_mask={self.undial_mask!r}: 'all' or 'answer'")


def undial_loss(model, batch: Batch, ref, hp: UNDIALConfig) -> Result:
    ref = need_reference(ref, "UNDIAL")
    f = batch["forget"]
    logits = forward_logits(model, f)
    lg, y = shifted(logits, f["labels"])
    with torch.no_grad():
        t, _ = shifted(reference_logits(ref, f, logits.device), f["labels"])
        v = t.size(-1)
        penalty = torch.zeros_like(t)
        penalty.scatter_(-1, (y % v).unsqueeze(-1), hp.beta)  # −100 ≡ V−100, as upstream
        target = F.softmax(t - penalty, dim=-1)
    ce = -(target * F.log_softmax(lg, dim=-1)).sum(-1)
    if hp.undial_mask == "answer":
        mask = y != IGNORE_INDEX
        lf = ce[mask].sum() / mask.sum().clamp_min(1)
    else:
        lf = ce.mean()
    return combine(lf, batch.get("retain"), model, ref, hp)


METHOD = Method(
    "UNDIAL",
    undial_loss,
    UNDIALConfig,
    needs_reference=True,
    needs_retain=True,
    rounds_epochs=(1, 10),
    paper={"alpha": 1.0, "undial_mask": "answer"},
    aliases=("UnDIAL",),
)
