"""`mpu client diff | unlearn`: the data owner's side."""

from __future__ import annotations

import argparse


def _diff(args: argparse.Namespace) -> int:
    from mpu.client.diff import make_delta

    out = make_delta(args.before, args.after, args.out)
    print(f"wrote update {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    client = sub.add_parser("client", help="data owner: unlearn on a copy, return the update")
    csub = client.add_subparsers(dest="client_command", metavar="ACTION", required=True)
    p = csub.add_parser(
        "diff", help="delta = unlearned model − published copy (any unlearning tool)"
    )
    p.add_argument(
        "--before", required=True, help="the published copy folder (holds mpu-ticket.json)"
    )
    p.add_argument("--after", required=True, help="the unlearned model folder")
    p.add_argument("--out", required=True, help="delta file to write (.safetensors)")
    p.set_defaults(handler=_diff)
