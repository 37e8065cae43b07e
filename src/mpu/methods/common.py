"""Token-level building blocks shared by the unlearning losses (docs/methods.md).

Every helper casts logits to fp32 before a log-softmax: bf16 log-probabilities lose
several digits, and the sequence sums of NPO/DPO amplify that (docs/metrics.md, docs/protocol.md §10 B26).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from mpu.text import IGNORE_INDEX

Batch = Mapping[str, torch.Tensor]

_MODEL_KEYS = ("input_ids", "attention_mask")


def model_inputs(inputs: Batch) -> dict[str, torch.Tensor]:
    """The keys a causal LM forward takes (labels are scored here, not inside the model)."""
    return {k: inputs[k] for k in _MODEL_KEYS if k in inputs}


def _on_device(model: torch.nn.Module, inputs: Batch) -> dict[str, torch.Tensor]:
    """The forward's keyword inputs, on the model's device."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in model_inputs(inputs).items()}


def forward_logits(model: torch.nn.Module, inputs: Batch) -> torch.Tensor:
    """fp32 logits [B, T, V] of `model` on `inputs` (moved to the model's device)."""
    return model(**_on_device(model, inputs)).logits.float()


@torch.no_grad()
def reference_logits(ref: torch.nn.Module, inputs: Batch, device: torch.device) -> torch.Tensor:
    """fp32 logits of the frozen reference/teacher model, returned on `device`."""
    return forward_logits(ref, inputs).to(device)


def shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token alignment: logits at t predict label t+1."""
    return logits[:, :-1, :], labels[:, 1:].to(logits.device)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy ℓ[b, t] (0 where the next label is -100) and the answer mask A,
    both [B, T − 1].

    The labels are shifted, not the logits (as HF's causal-LM loss does): slicing logits[:, :-1]
    and flattening it copies the whole B·T·V tensor forward and again in backward, a tenth of a
    small model's step. Each row's value is the same either way."""
    y = F.pad(labels[:, 1:].to(logits.device), (0, 1), value=IGNORE_INDEX)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(y)  # fmt: skip
    return nll[:, :-1], y[:, :-1] != IGNORE_INDEX


def answer_token_nll(model: torch.nn.Module, inputs: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_nll(forward_logits(model, inputs), labels)`, with the LM head applied only at the
    positions that predict a labelled token.

    A TOFU item's question and chat template are about half its tokens, and their logits
    only ever get a zero gradient: for a small vocabulary model the head and its log-softmax
    are most of a step. Families whose logits are exactly head(decoder) (`plain_head`) run the
    decoder, gather the answer rows and apply the head to those; others take the full path.
    Same values and gradients up to fp32 rounding (a matmul over fewer rows may sum in
    another order)."""
    labels = inputs["labels"]
    if not _head_apart(model):
        return token_nll(forward_logits(model, inputs), labels)
    hidden = model.get_decoder()(**_on_device(model, inputs)).last_hidden_state
    y = labels[:, 1:].to(hidden.device)
    mask = y != IGNORE_INDEX
    logits = model.get_output_embeddings()(hidden[:, :-1][mask]).float()
    picked = F.cross_entropy(logits, y[mask], reduction="none")
    return picked.new_zeros(mask.shape).masked_scatter(mask, picked), mask


def _head_apart(model: torch.nn.Module) -> bool:
    """Whether the decoder and the head may be called apart: a Hugging Face model of a
    plain-head family as it is — not a wrapper whose forward does more (a PEFT model, an
    adapters-off reference) and not sharded with FSDP (its root's hooks gather the parameters;
    calling the parts directly would skip them)."""
    from transformers import PreTrainedModel

    from mpu.arch.families import plain_head

    if not isinstance(model, PreTrainedModel) or not plain_head(model):
        return False
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return True
    return not isinstance(model, FSDPModule)


def answer_ce(model: torch.nn.Module, inputs: Batch) -> torch.Tensor:
    """CE_θ(batch) (`batch_ce`) on the answer tokens, the head applied only where needed."""
    nll, mask = answer_token_nll(model, inputs)
    return nll.sum() / mask.sum().clamp_min(1)


def item_means(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each item's token-mean answer NLL ([B]) from `token_nll`'s output; 0 for an item with no
    answer token (its sum is 0, its count is clamped to 1)."""
    return nll.sum(-1) / mask.sum(-1).clamp(min=1)


def batch_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE_θ(batch): token mean over the whole batch (HF `outputs.loss`), not a mean of means."""
    nll, mask = token_nll(logits, labels)
    return nll.sum() / mask.sum().clamp_min(1)


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(p_ref ‖ p_θ) over all B·T rows (OpenUnlearning `compute_kl_divergence`)."""
    v = logits.size(-1)
    cur = F.log_softmax(logits.reshape(-1, v), dim=-1)
    ref = F.log_softmax(ref_logits.reshape(-1, v), dim=-1)
    return F.kl_div(cur, ref, reduction="batchmean", log_target=True)


def retain_loss(
    model: torch.nn.Module,
    retain: Batch,
    ref: torch.nn.Module | None,
    loss_type: str,
) -> torch.Tensor:
    """L_r (docs/methods.md): `NLL` = CE on the retain batch, `KL` = KL to the reference model.

    The reference model is an explicit argument: the reference client deep-copied the
    *current* model for KL every step, which makes KL ≡ 0 (docs/protocol.md §10 B27).
    """
    if loss_type == "NLL":
        return answer_ce(model, retain)
    if loss_type == "KL":
        if ref is None:
            raise ValueError("retain_loss_type=KL needs a reference model")
        logits = forward_logits(model, retain)
        return kl_to_reference(logits, reference_logits(ref, retain, logits.device))
    raise ValueError(f"unknown retain_loss_type {loss_type!r} (NLL or KL)")


def combine(
    forget_loss: torch.Tensor,
    retain: Batch | None,
    model: torch.nn.Module,
    ref: torch.nn.Module | None,
    hp: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = γ·L_f + α·L_r; the retain forward is skipped when α = 0 (UNDIAL's stock setting)."""
    logs = {"forget_loss": float(forget_loss.detach())}
    loss = hp.gamma * forget_loss
    if hp.alpha != 0:
        if retain is None:
            raise ValueError(
                f"{type(hp).__name__}: alpha={hp.alpha} but the batch has no retain part"
            )
        r = retain_loss(model, retain, ref, hp.retain_loss_type)
        logs["retain_loss"] = float(r.detach())
        loss = loss + hp.alpha * r
    logs["loss"] = float(loss.detach())
    return loss, logs


def log_ratio(model, ref, inputs) -> torch.Tensor:
    """Δ_b = log π_θ(b) − log π_ref(b), sums over answer tokens (NPO, DPO)."""
    nll = answer_token_nll(model, inputs)[0].sum(-1)
    return -(nll - reference_sequence_nll(ref, inputs, nll.device))


# per frozen reference model: an item's token sequence → NLL_ref(item) (a weak key, so a run's
# cache goes with its reference model)
_REFERENCE_NLL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def reference_sequence_nll(ref: torch.nn.Module, inputs: Batch, device) -> torch.Tensor:
    """NLL_ref(b) = Σ_{t∈A_b} ℓ_ref[b, t] for each item of the batch ([B], on `device`),
    remembered per reference model and token sequence.

    The reference is frozen, so an item's value never changes, yet NPO and DPO score every
    forget item again each epoch: the reference forward is a sixth of such a step. Only the
    batch's items not seen before are computed. A value computed in another batch may differ
    from a fresh one in the last bit (other padding, other matmul shapes). A reference with
    a trainable parameter (a model passed as its own reference, LoRA's adapters-off view) is
    computed every time."""
    if any(p.requires_grad for p in ref.parameters()):
        return answer_token_nll(ref, inputs)[0].sum(-1).to(device)
    cache = _REFERENCE_NLL.setdefault(ref, {})
    keys = _sequence_keys(inputs)
    missing = [i for i, key in enumerate(keys) if key not in cache]
    if missing:
        rows = torch.tensor(missing)
        part = {k: inputs[k][rows] for k in (*_MODEL_KEYS, "labels") if k in inputs}
        for i, value in zip(missing, answer_token_nll(ref, part)[0].sum(-1).tolist(), strict=True):
            cache[keys[i]] = value
    return torch.tensor([cache[key] for key in keys], dtype=torch.float32, device=device)


def _sequence_keys(inputs: Batch) -> list[bytes]:
    """Each row's identity: its attended token ids and its labels (padding left out)."""
    ids, labels = inputs["input_ids"].cpu(), inputs["labels"].cpu()
    mask = inputs.get("attention_mask")
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.cpu().bool()
    return [
        ids[b][keep[b]].numpy().tobytes() + b"|" + labels[b][keep[b]].numpy().tobytes()
        for b in range(ids.shape[0])
    ]


def weighted_ascent(model, forget: Batch, weight_fn) -> torch.Tensor:
    """−⟨sg(w(p)) ℓ⟩_A: token-weighted gradient ascent (SatImp, WGA)."""
    nll, mask = answer_token_nll(model, forget)
    with torch.no_grad():
        w = weight_fn(torch.exp(-nll))
    return -(w * nll)[mask].mean()
