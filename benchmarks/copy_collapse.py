"""Where a published copy stops being a clone of θ, and whether it is still a working model there.

For each κ, a server job with two copies on the noise line (nodes ±1: the least-noised copies
that any m publishes) is initialised and published exactly as `mpu server init copies=2
kappa=K` and `mpu server publish` do. Each copy is then scored on two sets of question–answer
items: what θ memorised (default: the forget split it was fine-tuned on), which gives the copy's
functional leakage L = (s(copy) − s(base)) / (s(θ) − s(base)) (docs/threat-model.md), and items
no model here was trained on (default: holdout01), which tells whether the copy still works as a
language model at all. A round leaks as much as its most telling copy, so L is the larger of
the two.

    python benchmarks/copy_collapse.py --models PAIR --data DATA --kappas 1 3 10 15 20 25 30 100
    python benchmarks/copy_collapse.py ... --kappas 0.1 10 --set emulator=layer_drop emulator_stride=2

`--set` passes server settings to `mpu server init` (the emulator's copies keep only some of the
middle blocks; docs/threat-model.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def publish(pair: Path, kappa: float, root: Path, settings: list[str] = ()) -> list[Path]:
    """The copies of a fresh two-copy job at `kappa` (secret key, as a user's job)."""
    work, out = root / f"W-k{kappa:g}", root / f"pub-k{kappa:g}"
    mpu = [sys.executable, "-m", "mpu.cli"]
    subprocess.run([*mpu, "server", "init", "--model", str(pair / "target"), "--base",
                    str(pair / "base"), "--workdir", str(work), "copies=2", f"kappa={kappa}",
                    "gate=false", *settings], check=True, capture_output=True)  # fmt: skip
    subprocess.run([*mpu, "server", "publish", "--workdir", str(work), "--out", str(out),
                    "--quiet"], check=True, capture_output=True)  # fmt: skip
    return sorted(out.glob("copy-*"))


def add_item_arguments(p: argparse.ArgumentParser) -> None:
    """The pair and the two item sets every functional-leakage benchmark scores on."""
    p.add_argument("--models", required=True, type=Path, help="prepared pair: base/, target/")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--memorised", default="forget01", help="split θ was fine-tuned on")
    p.add_argument("--unseen", default="holdout01", help="split no model was trained on")


def item_scorer(args: argparse.Namespace):
    """(scores, θ's scores, the base's scores): `scores(model)` scores a model, in memory, on
    what θ memorised and on the unseen items; θ's and the base's are printed."""
    from mpu.server.leakage.functional import knowledge, score
    from mpu.server.leakage.models import model_with

    target = args.models / "target"
    sets = {n: knowledge(target, args.data / split, 0)
            for n, split in (("memorised", args.memorised), ("unseen", args.unseen))}  # fmt: skip

    def scores(model) -> dict:
        return {n: score(model, items) for n, items in sets.items()}

    theta, base = scores(model_with(target)), scores(model_with(args.models / "base"))
    print(f"θ: memorised {theta['memorised']['answer_prob']:.3f}, unseen "
          f"{theta['unseen']['answer_prob']:.3f}; base: {base['memorised']['answer_prob']:.3f}, "
          f"{base['unseen']['answer_prob']:.3f}")  # fmt: skip
    return scores, theta, base


def main() -> None:
    from mpu.server.leakage.functional import leakage
    from mpu.server.leakage.models import model_with

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_item_arguments(p)
    p.add_argument("--kappas", nargs="+", type=float, default=[1, 3, 10, 20, 30])
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="more server settings for every job (e.g. emulator=layer_drop)",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    scores, theta, base = item_scorer(args)
    print("| κ | L one copy (answer prob / log-likelihood) | the copies' memorised prob "
          "| the copies' unseen prob |\n|---|---|---|---|")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpu-collapse-") as tmp:
        for kappa in args.kappas:
            per_copy = [
                scores(model_with(c)) for c in publish(args.models, kappa, Path(tmp), args.set)
            ]
            ls = [leakage(c["memorised"], theta["memorised"], base["memorised"]) for c in per_copy]
            top = {k: max(x[k] for x in ls) for k in ls[0]}
            rows.append({"kappa": kappa, "L_one_copy": top, "copies": per_copy})
            print(f"| {kappa:g} | {top['answer_prob']:.2f} / {top['log_likelihood']:.2f} | "
                  + ", ".join(f"{c['memorised']['answer_prob']:.3f}" for c in per_copy) + " | "
                  + ", ".join(f"{c['unseen']['answer_prob']:.3f}" for c in per_copy) + " |",
                  flush=True)  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"theta": theta, "base": base, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
