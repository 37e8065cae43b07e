"""Distill: distillation isolation (docs/methods.md). The student — the copy being unlearned —
follows a teacher that never saw the forget data on the forget set's answers, and its own
starting point (the reference copy) on the retain set's:

    L = γ·D(teacher ‖ student; forget answers) + α·D(reference ‖ student; retain answers)

with D the mean over answer positions of the next-token divergence, forward KL(p ‖ q) =
Σ_v p log(p/q) or reverse KL(q ‖ p) (`divergence`). The teacher is the public base by default
(`mpu run` passes it; `mpu client unlearn` takes `teacher=DIR`), or a model the server
provides. Only the teacher's outputs are read, so it need not be in the copy's basis: the
public base works with every published copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpu.config import field
from mpu.errors import ConfigError
from mpu.methods.base import Batch, Method, Result, need_reference, positive
from mpu.methods.common import forward_logits, reference_logits

DIVERGENCES = ("forward", "reverse")


@dataclass
class DistillConfig:
    """Distillation isolation."""

    gamma: float = field(1.0, help="weight γ of the forget-set distillation to the teacher")
    alpha: float = field(1.0, help="weight α of the retain-set distillation to the start copy")
    divergence: str = field(
        "forward", help="forward: KL(teacher ‖ student), mass-covering | reverse: "
        "KL(student ‖ teacher), mode-seeking"
    )  # fmt: skip

    def __post_init__(self) -> None:
        positive(self, "gamma", self.gamma, allow_zero=True)
        positive(self, "alpha", self.alpha, allow_zero=True)
        if self.divergence not in DIVERGENCES:
            raise ConfigError(f"DistillConfig.divergence={self.divergence!r}: choose one of "
                              f"{', '.join(DIVERGENCES)}")  # fmt: skip


def answer_divergence(student: torch.Tensor, teacher: torch.Tensor, labels, kind: str):
    """Mean over answer positions (next label ≠ −100) of KL between next-token distributions."""
    y = labels[:, 1:].to(student.device)
    mask = torch.cat([y != -100, torch.zeros_like(y[:, :1], dtype=torch.bool)], dim=1)
    s = F.log_softmax(student[mask], dim=-1)
    t = F.log_softmax(teacher[mask], dim=-1)
    p, q = (t, s) if kind == "forward" else (s, t)
    return (p.exp() * (p - q)).sum(-1).mean()


def distill_loss(model, batch: Batch, ref, hp: DistillConfig, *, teacher) -> Result:
    f = batch["forget"]
    s = forward_logits(model, f)
    lf = answer_divergence(s, reference_logits(teacher, f, s.device), f["labels"], hp.divergence)
    logs = {"forget_loss": float(lf.detach())}
    loss = hp.gamma * lf
    if hp.alpha != 0:
        r = batch["retain"]
        sr = forward_logits(model, r)
        ref = need_reference(ref, "Distill")
        lr = answer_divergence(sr, reference_logits(ref, r, sr.device), r["labels"], hp.divergence)
        logs["retain_loss"] = float(lr.detach())
        loss = loss + hp.alpha * lr
    logs["loss"] = float(loss.detach())
    return loss, logs


METHOD = Method(
    "Distill", distill_loss, DistillConfig, needs_reference=True, needs_retain=True,
    needs_teacher=True,
)  # fmt: skip
