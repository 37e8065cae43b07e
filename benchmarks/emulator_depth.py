"""How many of θ's middle blocks a layer-drop emulator can leave out before it stops working.

An emulator copy (`server.emulator=layer_drop`, docs/threat-model.md) keeps θ's outer blocks and
only some of its middle ones. Without any noise, θ with `d` middle blocks left out (evenly
spaced, the outer `--outer` blocks at each end always kept) is the best any such copy can be:
MPU's noise only lowers it. For each d this scores that model on what θ memorised (its
functional leakage L, as `mpu privacy audit` computes it) and on items no model here was trained
on (whether it still works as a language model). The published emulator with stride s leaves out
all but every s-th middle block: d = M − ⌈M / s⌉ of the M middle blocks.

    python benchmarks/emulator_depth.py --models PAIR --data DATA --drops 0 1 2 4 6 8 13
    python benchmarks/emulator_depth.py --models PAIR --data DATA --drops 4 8 13 --distill-steps 200

`--distill-steps N` adds Offsite-Tuning's second step: the server distils the thinned model
towards θ on public text it chooses before publishing it. Here the public text is sampled from
the public base model (nothing of θ's fine-tuning data), and only the kept middle blocks train
(the outer blocks are the adapter the client would unlearn), on KL(θ ‖ emulator) over every
position. Each d is then scored twice: as left out, and distilled.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PREFIX = "model.layers"  # the Llama-family block list (SmolLM2, the tiny models)


def dropped_blocks(n_layers: int, outer: int, drop: int) -> list[int]:
    """`drop` middle block indices spread evenly over θ's middle (the outer blocks stay): the
    blocks `server.emulator_drop=drop` leaves out."""
    from mpu.errors import ConfigError
    from mpu.server.emulator import Emulator

    try:
        return Emulator(n_layers, outer, 2, drop).left_out if drop else []
    except ConfigError as e:
        raise SystemExit(f"--drops {drop}: {e}") from None


def _distilled(args, target: Path, blocks: list[int], n_layers: int, texts, teacher):
    """θ without `blocks`, its kept middle blocks distilled towards θ (as the server does under
    `server.emulator_distill_steps`); the losses."""
    from mpu.server.distill import block_list, distill, without_blocks
    from mpu.server.leakage.models import model_with

    student = without_blocks(model_with(target), PREFIX, blocks)
    kept = block_list(student, PREFIX)
    middle = range(args.outer, n_layers - len(blocks) - args.outer)
    params = [p for i in middle for p in kept[i].parameters()]
    losses = distill(student, teacher, texts, params, steps=args.distill_steps,
                     lr=args.distill_lr, batch=args.distill_batch, seed=0)  # fmt: skip
    return student, losses


def _arguments(add_item_arguments) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_item_arguments(p)
    p.add_argument("--outer", type=int, default=2, help="blocks always kept at each end")
    p.add_argument("--drops", nargs="+", type=int, default=[0, 1, 2, 4, 8])
    p.add_argument("--json", type=Path)
    p.add_argument("--distill-steps", type=int, default=0, help="also distil each (0: no)")
    p.add_argument("--distill-lr", type=float, default=1e-4)
    p.add_argument("--distill-batch", type=int, default=8)
    p.add_argument("--distill-texts", type=int, default=256, help="public sequences sampled")
    p.add_argument("--distill-length", type=int, default=64, help="tokens per sequence")
    return p.parse_args()


def main() -> None:
    from transformers import AutoConfig

    from copy_collapse import add_item_arguments, item_scorer
    from mpu.server.distill import public_text, without_blocks
    from mpu.server.leakage.functional import leakage
    from mpu.server.leakage.models import model_with

    args = _arguments(add_item_arguments)
    scores, theta, base = item_scorer(args)
    target = args.models / "target"
    n_layers = AutoConfig.from_pretrained(str(target)).num_hidden_layers
    texts = teacher = None
    if args.distill_steps:
        texts = public_text(args.models / "base", args.distill_texts, args.distill_length, 0)
        teacher = model_with(target).eval()
    print("| middle blocks left out | blocks kept | distilled | L (answer prob / log-likelihood) "
          "| memorised prob | unseen prob |\n|---|---|---|---|---|---|")  # fmt: skip
    rows = []
    for drop in args.drops:
        blocks = dropped_blocks(n_layers, args.outer, drop)
        variants = [("no", without_blocks(model_with(target), PREFIX, blocks), None)]
        if args.distill_steps and drop:
            student, losses = _distilled(args, target, blocks, n_layers, texts, teacher)
            variants.append((f"{args.distill_steps} steps", student, losses))
        for how, model, losses in variants:
            s = scores(model)
            ell = leakage(s["memorised"], theta["memorised"], base["memorised"])
            rows.append({"drop": drop, "blocks": blocks, "distilled": how, "L": ell, "scores": s,
                         "distill_loss": losses and [losses[0], losses[-1]]})  # fmt: skip
            print(f"| {drop} | {n_layers - drop} | {how} | {ell['answer_prob']:.2f} / "
                  f"{ell['log_likelihood']:.2f} | {s['memorised']['answer_prob']:.3f} | "
                  f"{s['unseen']['answer_prob']:.3f} |"
                  + (f" KL {losses[0]:.2f} → {losses[-1]:.2f}" if losses else ""), flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"theta": theta, "base": base, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
