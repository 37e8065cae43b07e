"""Where a forget set lives, summarised per decoder block × parameter role: the share of the
top-scoring parameters that falls in each cell and how much more than chance that is (the
enrichment), as JSON and as a heatmap (issue 27, `mpu client assess`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

OUTSIDE = "outside blocks"


def cell_of(config, name: str) -> tuple[str, str]:
    """(block label, role) of a parameter: role is the module that holds it (q_proj, mlp's
    down_proj, input_layernorm, embed_tokens, lm_head, …)."""
    from mpu.arch import block_index

    parts = name.split(".")
    role = parts[-2] if len(parts) > 1 else parts[-1]
    layer = block_index(config, name)
    return (OUTSIDE if layer is None else f"block {layer}"), role


def summarize(config, scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict:
    """Per cell: parameters, kept (in the top set), share of all kept, enrichment = the cell's
    kept share of its own parameters over the overall kept share (1 = chance); cells sorted
    by enrichment, the largest first."""
    cells: dict[tuple[str, str], list[int]] = {}
    for name, mask in masks.items():
        cell = cells.setdefault(cell_of(config, name), [0, 0])
        cell[0] += mask.numel()
        cell[1] += int(mask.sum())
    total = sum(c[0] for c in cells.values())
    kept = max(sum(c[1] for c in cells.values()), 1)
    rows = [
        {
            "block": block,
            "role": role,
            "parameters": n,
            "kept": k,
            "share_of_kept": k / kept,
            "enrichment": (k / n) / (kept / total),
        }
        for (block, role), (n, k) in cells.items()
    ]
    rows.sort(key=lambda r: -r["enrichment"])
    mass = {n: float(s.sum()) for n, s in scores.items()}
    return {"kept_parameters": kept, "parameters": total, "cells": rows,
            "score_mass_outside_blocks": sum(v for n, v in mass.items()
                                             if cell_of(config, n)[0] == OUTSIDE)
            / max(sum(mass.values()), 1e-30)}  # fmt: skip


def read_summary(path) -> dict:
    """An assessment's summary.json, refused by field (DataError naming the file) unless it is
    what `mpu client assess` writes: the report draws it, and run folders travel."""
    import json
    import math

    from mpu.errors import DataError

    try:
        summary = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable assessment summary ({exc})") from None
    fraction = summary.get("top_fraction") if isinstance(summary, dict) else None
    scores = summary.get("scores") if isinstance(summary, dict) else None
    if not (isinstance(fraction, int | float) and 0 < fraction <= 1 and isinstance(scores, dict)):
        raise DataError(f"{path}: needs top_fraction in (0, 1] and a scores object")
    for score, s in scores.items():
        cells = s.get("cells") if isinstance(s, dict) else None
        ok = isinstance(cells, list) and cells and all(
            isinstance(c, dict) and isinstance(c.get("block"), str)
            and isinstance(c.get("role"), str) and isinstance(c.get("enrichment"), int | float)
            and math.isfinite(c["enrichment"]) and c["enrichment"] >= 0
            for c in cells
        )  # fmt: skip
        if not ok:
            raise DataError(f"{path}: scores.{score}.cells: each cell needs block, role and a "
                            "finite enrichment >= 0")  # fmt: skip
    return summary


def _order(labels: Sequence[str]) -> list[str]:
    blocks = sorted({b for b in labels if b != OUTSIDE}, key=lambda b: int(b.split()[1]))
    return blocks + ([OUTSIDE] if OUTSIDE in labels else [])


def heatmap(summary: dict, title: str) -> Any:
    """The figure: blocks down, roles across, colour = enrichment on a log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm

    cells = summary["cells"]
    blocks = _order([c["block"] for c in cells])
    roles = sorted({c["role"] for c in cells})
    grid = np.full((len(blocks), len(roles)), np.nan)
    for c in cells:
        grid[blocks.index(c["block"]), roles.index(c["role"])] = max(c["enrichment"], 1e-3)
    fig, ax = plt.subplots(figsize=(2.5 + 0.7 * len(roles), 2.4 + 0.35 * len(blocks)))
    image = ax.imshow(grid, cmap="magma", norm=LogNorm(vmin=1e-2, vmax=max(np.nanmax(grid), 2)),
                      aspect="auto")  # fmt: skip
    ax.set_xticks(range(len(roles)), roles, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(blocks)), blocks, fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="enrichment (1 = chance)")
    fig.tight_layout()
    return fig
