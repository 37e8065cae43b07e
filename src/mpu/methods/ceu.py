"""CE-U (Yang et al. 2025, arXiv 2503.01224): cross-entropy against the model's own detached
distribution with the true token removed. Forget set only, no retain term."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpu.config import field
from mpu.errors import ConfigError
from mpu.methods.base import Batch, Method, Result
from mpu.methods.common import forward_logits, shifted
from mpu.text import IGNORE_INDEX


@dataclass
class CEUConfig:
    """Cross-entropy unlearning."""

    ignore_first_n_answer_tokens: int = field(
        1, help="answer tokens skipped at the start of each answer (CE-U community default 1)"
    )

    def __post_init__(self) -> None:
        if self.ignore_first_n_answer_tokens < 0:
            raise ConfigError(
                f"CEUConfig.ignore_first_n_answer_tokens={self.ignore_first_n_answer_tokens}: >= 0"
            )


def ceu_loss(model, batch: Batch, ref, hp: CEUConfig) -> Result:
    f = batch["forget"]
    labels = f["labels"].clone()
    n = hp.ignore_first_n_answer_tokens
    if n:
        labelled = labels != IGNORE_INDEX
        rank = labelled.long().cumsum(-1)  # 1-based rank among labelled positions
        labels[labelled & (rank <= n)] = IGNORE_INDEX
    lg, y = shifted(forward_logits(model, f), labels)
    mask = y != IGNORE_INDEX
    z = lg[mask]
    if z.numel() == 0:
        raise ValueError("CE-U: no answer tokens left after ignore_first_n_answer_tokens")
    with torch.no_grad():
        q = F.softmax(z.detach().scatter(-1, y[mask].unsqueeze(-1), float("-inf")), dim=-1)
    loss = -(q * F.log_softmax(z, dim=-1)).sum(-1).mean()
    return loss, {"forget_loss": float(loss.detach()), "loss": float(loss.detach())}


METHOD = Method("CE-U", ceu_loss, CEUConfig, rounds_epochs=(1, 10), aliases=("CEU",))
