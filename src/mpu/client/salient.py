"""Localized updates (`trainable=salient`): only the parameters where the forget set lives
change, each with a learning rate that may follow its importance (issue 27, docs/methods.md
"Localized updates").

The mask is the top `fraction` of the copy's parameters by importance relative to the retain
set (`mpu.client.importance`), computed on the copy the client holds, in the copy's basis. It is
enforced exactly: gradients outside it are zeroed before clipping (so AdamW's moments there stay
zero), and after every optimizer step the weights outside it are put back to their starting
values, which also undoes decoupled weight decay. The update the client returns is therefore
exactly zero outside the mask; the server needs no change (its inverse maps make the aggregated
update dense, which is the price of working in the copy's basis).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from mpu.client.importance import SCORES, importance, relative
from mpu.config import field
from mpu.errors import ConfigError

log = logging.getLogger("mpu.client")
LR_SCALES = ("none", "importance")
EMBEDDINGS = ("include", "exclude")


@dataclass
class SalientConfig:
    """What `trainable=salient` keeps and how the kept parameters learn."""

    fraction: float = field(0.05, help="share of the parameters that may change (0 < f ≤ 1)")
    score: str = field(
        "fisher", help="importance: fisher (diagonal empirical Fisher) | hutchinson (Hessian "
        "diagonal, `probes` probes) | grad (|gradient|, the cheap baseline)"
    )  # fmt: skip
    lr_scale: str = field(
        "none", help="none | importance: each kept parameter's step is scaled by its importance "
        "rank among the kept ones (the most important gets the full lr)"
    )  # fmt: skip
    probes: int = field(8, help="Hutchinson probes (score=hutchinson)")
    embeddings: str = field(
        "include", help="include | exclude: whether the token embedding and LM head may be in "
        "the mask. Their rows are indexed by token id, and relative importance ranks the forget "
        "set's own tokens first, so a mask that moves them names those tokens to whoever sees the "
        "update (docs/methods.md, \"Localized updates\"); exclude spends the fraction elsewhere"
    )  # fmt: skip

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, int | float) and 0 < self.fraction <= 1):
            raise ConfigError(f"salient.fraction={self.fraction!r}: must be in (0, 1]")
        if self.score not in SCORES:
            raise ConfigError(f"salient.score={self.score!r}: expected one of {', '.join(SCORES)}")
        if self.lr_scale not in LR_SCALES:
            raise ConfigError(
                f"salient.lr_scale={self.lr_scale!r}: expected one of {', '.join(LR_SCALES)}"
            )
        if not isinstance(self.probes, int) or self.probes < 1:
            raise ConfigError(f"salient.probes={self.probes!r}: must be an integer >= 1")
        if self.embeddings not in EMBEDDINGS:
            raise ConfigError(
                f"salient.embeddings={self.embeddings!r}: expected one of {', '.join(EMBEDDINGS)}"
            )


def top_masks(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Boolean masks of the parameters whose score is at least the ⌈f·N⌉-th largest (ties at
    the threshold are all kept, so copies that are signed permutations of each other keep
    corresponding parameters); parameters of score 0 are never kept."""
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    keep = max(1, math.ceil(fraction * flat.numel()))
    threshold = float(torch.kthvalue(flat, flat.numel() - keep + 1).values)
    if threshold <= 0:
        return {n: s > 0 for n, s in scores.items()}
    return {n: s >= threshold for n, s in scores.items()}


def token_indexed(model, named) -> list[str]:
    """The names in `named` of the model's token embedding and LM head (one parameter when they
    are tied): the weights whose rows belong to single tokens."""
    vocab = [model.get_input_embeddings(), model.get_output_embeddings()]
    ids = {id(m.weight) for m in vocab if m is not None}
    return [n for n, p in named if id(p) in ids]


def rank_scales(scores: dict, masks: dict) -> dict[str, torch.Tensor]:
    """Each kept parameter's importance rank among the kept ones, in (0, 1]; 0 elsewhere."""
    kept = torch.cat([scores[n][masks[n]].float() for n in scores]).sort().values
    out = {}
    for n, s in scores.items():
        rank = torch.searchsorted(kept, s.float().flatten(), right=True).view_as(s)
        out[n] = torch.where(masks[n], rank.float() / kept.numel(), torch.zeros((), dtype=s.dtype))
    return out


class SalientMask:
    """The mask over the optimizer's parameters and the three hooks of one optimizer step."""

    def __init__(self, named, masks: dict[str, torch.Tensor], scales: dict | None) -> None:
        self.named = named
        self.masks = {n: masks[n].to(p.device) for n, p in named}
        self.start = {n: p.detach().clone() for n, p in named}
        self.scales = None if scales is None else {n: scales[n].to(p) for n, p in named}
        self.prev: dict[str, torch.Tensor] = {}

    def kept(self) -> int:
        return sum(int(m.sum()) for m in self.masks.values())

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for n, p in self.named:
            if p.grad is not None:
                p.grad.mul_(self.masks[n])

    @torch.no_grad()
    def before_step(self) -> None:
        if self.scales is not None:
            self.prev = {n: p.detach().clone() for n, p in self.named}

    @torch.no_grad()
    def after_step(self) -> None:
        for n, p in self.named:
            if self.scales is not None:
                p.copy_(self.prev[n] + self.scales[n] * (p - self.prev[n]))
            p.copy_(torch.where(self.masks[n], p, self.start[n]))
        self.prev = {}


def build_mask(
    model,
    named,
    forget_items,
    retain_items,
    tokenizer,
    cfg: SalientConfig,
    *,
    seed: int = 0,
    step_named=None,
) -> tuple[SalientMask, dict[str, Any]]:
    """The mask of one run from the importance of `named` (the model's parameters) over the
    parameters the optimizer steps (`step_named`, default the same); and what it kept."""
    t0 = time.perf_counter()
    score = lambda items: importance(  # noqa: E731
        model, named, items, tokenizer, cfg.score, probes=cfg.probes, seed=seed
    )
    scores = relative(score(forget_items), score(retain_items) if retain_items else None)
    excluded = token_indexed(model, named) if cfg.embeddings == "exclude" else []
    for n in excluded:
        scores[n] = torch.zeros_like(scores[n])
    masks = top_masks(scores, cfg.fraction)
    scales = rank_scales(scores, masks) if cfg.lr_scale == "importance" else None
    mask = SalientMask(step_named or named, masks, scales)
    total = sum(p.numel() for _, p in named)
    info = {
        "score": cfg.score,
        "fraction": cfg.fraction,
        "kept_parameters": mask.kept(),
        "kept_fraction": mask.kept() / total,
        "relative_to_retain": bool(retain_items),
        "lr_scale": cfg.lr_scale,
        "excluded": excluded,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if info["kept_fraction"] < 0.5 * cfg.fraction:
        log.warning("salient: only %.3g %% of the parameters have a non-zero %s score; the "
                    "update is that sparse, not salient.fraction=%g", 100 * info["kept_fraction"],
                    cfg.score, cfg.fraction)  # fmt: skip
    return mask, info
