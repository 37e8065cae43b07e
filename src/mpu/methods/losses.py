"""Unlearning losses as plain functions: `loss(model, batch, ref, hp) -> (scalar, logs)`.

`batch` is a mapping with sub-batches (each `input_ids`, `attention_mask`, `labels`):
`forget` always, `retain` for methods with a retain term, `alternate` (the same questions
with a refusal answer) for IdkDPO. `ref` is the frozen reference/teacher model or None.
`hp` is the method's config dataclass (`mpu.methods.configs`). Formulas: METHODS.md §3;
they match OpenUnlearning @d3d7cf9 `src/trainer/unlearn/*.py` and `src/trainer/utils.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from mpu.data.formatting import IGNORE_INDEX
from mpu.methods import configs as C
from mpu.methods.common import (
    batch_ce,
    combine,
    forward_logits,
    reference_logits,
    sequence_nll,
    shifted,
    token_nll,
)

Batch = Mapping[str, Any]
Result = tuple[torch.Tensor, dict[str, float]]


def _need_ref(ref: torch.nn.Module | None, name: str) -> torch.nn.Module:
    if ref is None:
        raise ValueError(f"{name} needs a reference model (pass reference_model)")
    return ref


def grad_ascent_loss(model, batch: Batch, ref, hp: C.GradAscentConfig) -> Result:
    """L = −CE_θ(B_f) (§3.1)."""
    f = batch["forget"]
    loss = -batch_ce(forward_logits(model, f), f["labels"])
    return loss, {"forget_loss": float(loss.detach()), "loss": float(loss.detach())}


def grad_diff_loss(model, batch: Batch, ref, hp: C.GradDiffConfig) -> Result:
    """L = γ·(−CE_θ(B_f)) + α·L_r (§3.2)."""
    f = batch["forget"]
    lf = -batch_ce(forward_logits(model, f), f["labels"])
    return combine(lf, batch.get("retain"), model, ref, hp)


def _log_ratio(model, ref, inputs) -> torch.Tensor:
    """Δ_b = log π_θ(b) − log π_ref(b), sums over answer tokens."""
    logits = forward_logits(model, inputs)
    ref_logits = reference_logits(ref, inputs, logits.device)
    return -(sequence_nll(logits, inputs["labels"]) - sequence_nll(ref_logits, inputs["labels"]))


def npo_loss(model, batch: Batch, ref, hp: C.NPOConfig) -> Result:
    """L_f = −(2/β)·mean_b log σ(−β Δ_b) (§3.3, NPO paper form)."""
    ref = _need_ref(ref, "NPO")
    delta = _log_ratio(model, ref, batch["forget"])
    lf = -(2.0 / hp.beta) * F.logsigmoid(-hp.beta * delta).mean()
    return combine(lf, batch.get("retain"), model, ref, hp)


def simnpo_loss(model, batch: Batch, ref, hp: C.SimNPOConfig) -> Result:
    """L_f = −(2/β)·mean_b log σ(β(NLL_θ(b)/n_b − δ)) (§3.4). No reference model."""
    f = batch["forget"]
    logits = forward_logits(model, f)
    nll, mask = token_nll(logits, f["labels"])
    n = mask.sum(-1).clamp_min(1)
    lf = -(2.0 / hp.beta) * F.logsigmoid(hp.beta * (nll.sum(-1) / n - hp.delta)).mean()
    return combine(lf, batch.get("retain"), model, ref, hp)


def dpo_loss(model, batch: Batch, ref, hp: C.DPOConfig) -> Result:
    """L_f = −(2/β)·mean_b log σ(β(Δ^w_b − Δ^l_b)): win = refusal, lose = answer (§3.5)."""
    ref = _need_ref(ref, "DPO")
    if "alternate" not in batch:
        raise ValueError("DPO needs an 'alternate' (IDK) sub-batch")
    win = _log_ratio(model, ref, batch["alternate"])
    lose = _log_ratio(model, ref, batch["forget"])
    lf = -(2.0 / hp.beta) * F.logsigmoid(hp.beta * (win - lose)).mean()
    return combine(lf, batch.get("retain"), model, ref, hp)


def undial_loss(model, batch: Batch, ref, hp: C.UNDIALConfig) -> Result:
    """Distil from teacher logits with the target token pushed down by β (§3.6).

    `undial_mask='all'` averages over all B·(T−1) shifted positions and, like upstream,
    lets the label −100 index the vocabulary from the end (id V−100); `'answer'` averages
    over answer positions only (MPU reference client).
    """
    ref = _need_ref(ref, "UNDIAL")
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


def _weighted_ascent(model, f, weight_fn) -> torch.Tensor:
    logits = forward_logits(model, f)
    nll, mask = token_nll(logits, f["labels"])
    with torch.no_grad():
        w = weight_fn(torch.exp(-nll))
    return -(w * nll)[mask].mean()


def satimp_loss(model, batch: Batch, ref, hp: C.SatImpConfig) -> Result:
    """L_f = −⟨sg(p^β1 (1−p)^β2) ℓ⟩_A (§3.7)."""
    lf = _weighted_ascent(model, batch["forget"], lambda p: p**hp.beta1 * (1 - p) ** hp.beta2)
    return combine(lf, batch.get("retain"), model, ref, hp)


def wga_loss(model, batch: Batch, ref, hp: C.WGAConfig) -> Result:
    """L_f = −⟨sg(p^β) ℓ⟩_A (§3.8)."""
    lf = _weighted_ascent(model, batch["forget"], lambda p: p**hp.beta)
    return combine(lf, batch.get("retain"), model, ref, hp)


def ceu_loss(model, batch: Batch, ref, hp: C.CEUConfig) -> Result:
    """CE against the model's own detached distribution with the true token removed (§3.10)."""
    f = batch["forget"]
    labels = f["labels"].clone()
    n = hp.ignore_first_n_answer_tokens
    if n:
        labelled = labels != IGNORE_INDEX
        rank = labelled.long().cumsum(-1)  # 1-based rank among labelled positions
        labels[labelled & (rank <= n)] = IGNORE_INDEX
    logits = forward_logits(model, f)
    lg, y = shifted(logits, labels)
    mask = y != IGNORE_INDEX
    z = lg[mask]
    if z.numel() == 0:
        raise ValueError("CE-U: no answer tokens left after ignore_first_n_answer_tokens")
    with torch.no_grad():
        q = F.softmax(z.detach().scatter(-1, y[mask].unsqueeze(-1), float("-inf")), dim=-1)
    loss = -(q * F.log_softmax(z, dim=-1)).sum(-1).mean()
    return loss, {"forget_loss": float(loss.detach()), "loss": float(loss.detach())}
