"""The six membership-inference attacks of OpenUnlearning and their ROC AUC (docs/metrics.md).

Convention: a higher score means "less likely a member"; AUC uses label 0 for forget items and
1 for holdout items, so a model that memorised the forget set scores AUC -> 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mpu.errors import ConfigError
from mpu.eval import metrics as M
from mpu.eval.primitives import ItemStats, gradnorm_scores, labelled_text, score_items
from mpu.text import Encoded

ATTACKS = (
    "mia_loss",
    "mia_zlib",
    "mia_reference",
    "mia_gradnorm",
    "mia_min_k",
    "mia_min_k_plus_plus",
)


def mia_result(
    forget_index: Sequence[Any],
    forget_scores: Sequence[float],
    holdout_index: Sequence[Any],
    holdout_scores: Sequence[float],
) -> dict[str, Any]:
    """`{"forget": {...}, "holdout": {...}, "auc", "agg_value": auc}` in upstream's schema."""

    def split(index, scores):
        return {
            "agg_value": float(np.mean(scores)),
            "value_by_index": {i: {"score": float(s)} for i, s in zip(index, scores, strict=True)},
        }

    auc = M.roc_auc(forget_scores, holdout_scores)
    return {
        "forget": split(forget_index, forget_scores),
        "holdout": split(holdout_index, holdout_scores),
        "auc": auc,
        "agg_value": auc,
    }


def stats_scores(
    attack: str,
    stats: Sequence[ItemStats],
    encoded: Sequence[Encoded],
    tokenizer,
    *,
    k: float = 0.4,
    reference_stats: Sequence[ItemStats] | None = None,
) -> list[float]:
    """Per-item scores of a forward-pass attack from precomputed `ItemStats`."""
    if attack == "mia_loss":
        return [s.avg_loss for s in stats]
    if attack == "mia_zlib":
        return [
            M.zlib_score(s.avg_loss, labelled_text(tokenizer, e))
            for s, e in zip(stats, encoded, strict=True)
        ]
    if attack == "mia_min_k":
        return [M.min_k_score(s.token_logprobs, k) for s in stats]
    if attack == "mia_min_k_plus_plus":
        return [M.min_k_score(s.token_z, k) for s in stats]
    if attack == "mia_reference":
        if reference_stats is None:
            raise ConfigError("mia_reference needs a reference model (reference_model=...)")
        return [a.avg_loss - b.avg_loss for a, b in zip(stats, reference_stats, strict=True)]
    raise ConfigError(
        f"unknown membership-inference attack {attack!r}; known: {', '.join(ATTACKS)}"
    )


def run_attacks(
    model: torch.nn.Module,
    tokenizer,
    attacks: Sequence[str],
    forget: Sequence[Encoded],
    holdout: Sequence[Encoded],
    *,
    forget_index: Sequence[Any],
    holdout_index: Sequence[Any],
    pad_id: int,
    batch_size: int = 32,
    mask_mode: str = "pad_id",
    k: float = 0.4,
    reference_model: torch.nn.Module | None = None,
    stats_cache: Callable[[str, Sequence[Encoded]], list[ItemStats]] | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run `attacks` on the forget and holdout encodings; one result dict per attack key.

    `stats_cache(name, encoded)` lets a suite share forward passes with its other metrics.
    """
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ConfigError(f"unknown attack(s) {unknown}; known: {', '.join(ATTACKS)}")

    def stats_of(name: str, enc: Sequence[Encoded], m: torch.nn.Module) -> list[ItemStats]:
        if stats_cache is not None and m is model:
            return stats_cache(name, enc)
        return score_items(
            m,
            enc,
            pad_id=pad_id,
            batch_size=batch_size,
            mask_mode=mask_mode,
            desc=name,
            progress=progress,
        )

    out: dict[str, dict[str, Any]] = {}
    for attack in attacks:
        per_split = []
        for name, enc in (("mia_forget", forget), ("mia_holdout", holdout)):
            if attack == "mia_gradnorm":
                scores = gradnorm_scores(
                    model, enc, pad_id=pad_id, mask_mode=mask_mode, progress=progress
                )
            else:
                ref = None
                if attack == "mia_reference":
                    if reference_model is None:
                        raise ConfigError(
                            "mia_reference needs a reference model (reference_model=...)"
                        )
                    ref = stats_of(f"{name}_reference", enc, reference_model)
                scores = stats_scores(
                    attack, stats_of(name, enc, model), enc, tokenizer, k=k, reference_stats=ref
                )
            per_split.append(scores)
        out[attack] = mia_result(forget_index, per_split[0], holdout_index, per_split[1])
    return out
