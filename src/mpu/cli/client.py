"""`mpu client diff | unlearn`: the data owner's side."""

from __future__ import annotations

import argparse
import sys

from mpu.cli import EXIT_NO_EFFECT


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
    _register_unlearn(csub)
    _register_assess(csub)


def _assess(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mpu.client.assess import AssessRequest, assess

    req = AssessRequest(Path(args.copy), args.data, args.split, Path(args.out),
                        tuple(args.score), args.retain_split, args.probes, args.limit,
                        args.seed)  # fmt: skip
    summary = assess(req)
    print(f"assessed {args.copy} on {args.split} ({summary['forget_items']} items, "
          f"{summary['retain_items']} retain items)")  # fmt: skip
    for score, s in summary["scores"].items():
        top = ", ".join(f"{c['block']} {c['role']} ×{c['enrichment']:.1f}" for c in s["cells"][:3])
        print(f"  {score} ({s['seconds']:.1f} s): the top 5 % is densest in {top}")
    print(f"  wrote {req.out}/importance.safetensors, summary.json, heatmap-*.png")
    return 0


def _register_assess(csub: argparse._SubParsersAction) -> None:
    from mpu.client.importance import SCORES

    p = csub.add_parser(
        "assess",
        help="where the forget set lives: per-parameter importance, a block × role map",
        description="Score every parameter of a copy by how much the forget set relies on it, "
        "relative to the retain set (docs/methods.md, 'Localized updates'): per-tensor scores "
        "(importance.safetensors), a block × role summary (summary.json) and a heatmap per "
        "score. trainable=salient computes the same scores itself when it trains.",
    )
    p.add_argument("--copy", required=True, help="model folder (a published copy or any model)")
    p.add_argument("--data", required=True, help="data folder (`mpu data make …`) or hub id")
    p.add_argument("--split", default="forget10", help="forget split (default forget10)")
    p.add_argument("--retain-split", help="retain split (default: TOFU's complement; '' = none)")
    p.add_argument("--out", required=True, help="folder for the scores, summary and heatmaps")
    p.add_argument("--score", nargs="+", default=["fisher"], choices=SCORES,
                   help="estimators (default fisher)")  # fmt: skip
    p.add_argument("--probes", type=int, default=8, help="Hutchinson probes (default 8)")
    p.add_argument("--limit", type=int, help="use the first N forget items")
    p.add_argument("--seed", type=int, default=0, help="probe seed")
    p.set_defaults(handler=_assess)


def _unlearn(args: argparse.Namespace) -> int:
    from mpu.client.distributed import current_processes, launch_processes, launched
    from mpu.client.train_config import ClientTrainConfig
    from mpu.client.unlearn import check_copy, load_client_data, unlearn_copy
    from mpu.config import load_config

    if args.num_processes > 1 and not launched():  # in a launched process: train
        return launch_processes(args.num_processes, sys.argv[1:])
    overrides = [f"method={args.method}", *args.overrides]
    cfg = load_config(ClientTrainConfig, yaml_path=args.config, overrides=overrides)
    check_copy(args.copy, args.reference)  # before loading data or models
    data = load_client_data(args.data, args.split, cfg, retain_split=args.retain_split)
    model_dir, delta, info = unlearn_copy(
        args.copy,
        data,
        cfg,
        args.out,
        reference_dir=args.reference,
        order_seed=args.order_seed,
        progress=not args.quiet,
    )
    if not current_processes().is_main:
        return 0
    loss = info["forget_loss"]
    print(f"unlearned {args.copy} with {cfg.method} ({info['steps']} optimizer steps)")
    print(f"  forget-set loss {loss['before']:.4f} -> {loss['after']:.4f}; "
          f"{100 * info['changed_fraction']:.1f}% of the weights changed")  # fmt: skip
    print(f"  model: {model_dir}\n  delta: {delta}  (send this file to the server)")
    print(
        f"  receipt: {delta.parent / 'receipt.json'}  (keep it: your signed record of the exchange)"
    )
    if info["no_effect"]:
        print(f"mpu: warning: {info['no_effect']}", file=sys.stderr)
        return EXIT_NO_EFFECT
    return 0


def _register_unlearn(csub: argparse._SubParsersAction) -> None:
    from mpu.client.train_config import ClientTrainConfig
    from mpu.config import describe

    p = csub.add_parser(
        "unlearn",
        help="run an unlearning method on a copy, write the model and its delta",
        description="Unlearn the forget split from one published copy with a built-in method "
        "(docs/methods.md) and write OUT/model (the unlearned copy) and OUT/delta.safetensors "
        "(the update to send back). Unset settings take the profile's values, adjusted for "
        "small models (docs/methods.md, 'Defaults that unlearn'). Exit code 3: training ran but "
        "did not move the model (the message says which setting to change).",
        epilog="settings (key=value; nested with dots):\n"
        + describe(ClientTrainConfig, skip=("method",)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--copy", required=True, help="published copy folder (with mpu-ticket.json)")
    p.add_argument("--data", required=True, help="data folder (`mpu data make …`) or hub id")
    p.add_argument("--split", default="forget10", help="forget split (default forget10)")
    p.add_argument("--retain-split", help="retain split (default: TOFU's complement of --split)")
    p.add_argument(
        "--method",
        required=True,
        help="GradAscent, GradDiff, NPO, SimNPO, DPO, UNDIAL, SatImp, WGA, RMU, CE-U, PDU, "
        "AltPO, Distill (teacher=DIR)",
    )
    p.add_argument("--out", required=True, help="folder for model/ and delta.safetensors")
    p.add_argument(
        "--reference", help="reference copy for NPO/DPO/UNDIAL/RMU/KL (default: this copy)"
    )
    p.add_argument(
        "--order-seed", type=int, help="data-order seed; the same for every copy of a round"
    )
    p.add_argument("--config", help="YAML recipe with ClientTrainConfig keys")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--num-processes",
        type=int,
        default=1,
        help="data-parallel processes through `accelerate launch` (one per GPU; gloo on CPU). "
        "grad_accum is per process: the step averages grad_accum × N micro-batches",
    )
    p.add_argument(
        "overrides", nargs="*", help="ClientTrainConfig key=value (e.g. lr=2e-5 hparams.beta=0.2)"
    )
    p.set_defaults(handler=_unlearn)
