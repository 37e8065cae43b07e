"""Adversarial membership training against the same method without it (issue 27, must-show 3):
does `mia_adversary.weight=λ` move privleak towards 0 (the retain model's value) at ≤ 1 %
model-utility cost?

The client unlearns the tiny TOFU target (the Clean variant) with and without the adversary;
each final model gets the OpenUnlearning suite's forget answer probability, model utility and
privleak against the retain model, and its update the server-side leakage columns of
`benchmarks/salient.py` (same measurement code). The adversary's never-seen items are holdout10
without the evaluation's holdout rows, so forget01 or forget05 (not forget10).

    python benchmarks/adversary.py --forget-split forget05 --methods NPO GradDiff \
        --weights 1 5 --out runs/adversary
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    from salient import add_input_options, run_rows

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--forget-split", default="forget05")
    ap.add_argument("--methods", nargs="+", default=["NPO", "GradDiff"])
    ap.add_argument("--weights", type=float, nargs="+", default=[1.0, 5.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/adversary"))
    ap.add_argument("--table-only", action="store_true")
    add_input_options(ap)
    args = ap.parse_args()
    run_rows(args, [("without", {})] + [
        (f"adversary λ = {w:g}", {"mia_adversary": {"weight": w}}) for w in args.weights
    ])  # fmt: skip


if __name__ == "__main__":
    main()
