"""`mpu data make {tofu,muse,wmdp} --out DIR [--seed S]`: write a synthetic benchmark."""

from __future__ import annotations

import argparse

BENCHMARKS = ("tofu", "muse", "wmdp")


def _make(args: argparse.Namespace) -> int:
    from mpu.data import make_dataset, read_manifest

    out = make_dataset(args.benchmark, args.out, seed=args.seed)
    counts = read_manifest(out)["counts"]
    print(f"wrote synthetic {args.benchmark} (seed {args.seed}) to {out}:")
    for name, n in counts.items():
        print(f"  {name:40s} {n:6d}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` command group."""
    data = subparsers.add_parser("data", help="benchmark data: make synthetic stand-ins")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    make = sub.add_parser(
        "make",
        help="generate a synthetic benchmark in the real schema (offline)",
        description="Write DIR/manifest.json and DIR/{config}/{split}.jsonl in the schema of "
        "the real TOFU / MUSE / WMDP, so every loader and metric runs offline.",
    )
    make.add_argument("benchmark", choices=BENCHMARKS)
    make.add_argument("--out", required=True, help="output folder")
    make.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    make.set_defaults(handler=_make)
