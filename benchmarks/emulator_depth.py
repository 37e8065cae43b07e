"""How many of θ's middle blocks a layer-drop emulator can leave out before it stops working.

An emulator copy (`server.emulator=layer_drop`, docs/threat-model.md) keeps θ's outer blocks and
only some of its middle ones. Without any noise, θ with `d` middle blocks left out (evenly
spaced, the outer `--outer` blocks at each end always kept) is the best any such copy can be:
MPU's noise only lowers it. For each d this scores that model on what θ memorised (its
functional leakage L, as `mpu privacy audit` computes it) and on items no model here was trained
on (whether it still works as a language model). The published emulator with stride s leaves out
all but every s-th middle block: d = M − ⌈M / s⌉ of the M middle blocks.

    python benchmarks/emulator_depth.py --models PAIR --data DATA --drops 0 1 2 4 6 8 13
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def dropped_blocks(n_layers: int, outer: int, drop: int) -> list[int]:
    """`drop` middle block indices spread evenly over θ's middle (the outer blocks stay)."""
    middle = list(range(outer, n_layers - outer))
    if drop > len(middle):
        raise SystemExit(f"--drops {drop}: the model has only {len(middle)} middle blocks")
    if drop == 0:
        return []
    step = len(middle) / drop
    return [middle[int(step * i + step / 2)] for i in range(drop)]


def without_blocks(model, blocks: list[int]):
    """`model` with the decoder blocks `blocks` removed (in place), renumbered for attention."""
    left_out = set(blocks)
    kept = [layer for i, layer in enumerate(model.model.layers) if i not in left_out]
    model.model.layers = torch.nn.ModuleList(kept)
    for i, layer in enumerate(kept):
        layer.self_attn.layer_idx = i
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[: len(kept)]
    return model


def main() -> None:
    from transformers import AutoConfig

    from copy_collapse import add_item_arguments, item_scorer
    from mpu.server.leakage.functional import leakage
    from mpu.server.leakage.models import model_with

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_item_arguments(p)
    p.add_argument("--outer", type=int, default=2, help="blocks always kept at each end")
    p.add_argument("--drops", nargs="+", type=int, default=[0, 1, 2, 4, 8])
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    scores, theta, base = item_scorer(args)
    target = args.models / "target"
    n_layers = AutoConfig.from_pretrained(str(target)).num_hidden_layers
    print("| middle blocks left out | blocks kept | L (answer prob / log-likelihood) "
          "| memorised prob | unseen prob |\n|---|---|---|---|---|")  # fmt: skip
    rows = []
    for drop in args.drops:
        blocks = dropped_blocks(n_layers, args.outer, drop)
        s = scores(without_blocks(model_with(target), blocks))
        ell = leakage(s["memorised"], theta["memorised"], base["memorised"])
        rows.append({"drop": drop, "blocks": blocks, "L": ell, "scores": s})
        print(f"| {drop} | {n_layers - drop} | {ell['answer_prob']:.2f} / "
              f"{ell['log_likelihood']:.2f} | {s['memorised']['answer_prob']:.3f} | "
              f"{s['unseen']['answer_prob']:.3f} |", flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"theta": theta, "base": base, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
