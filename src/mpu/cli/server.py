"""`mpu server init | publish | aggregate | export | status`: the model owner's side."""

from __future__ import annotations

import argparse
import json


def _init(args: argparse.Namespace) -> int:
    from mpu.config import load_config
    from mpu.server.config import JobConfig
    from mpu.server.job import Server

    overrides = list(args.overrides)
    for flag, key in (
        (args.copies, "copies"),
        (args.kappa, "kappa"),
        (args.alphas, "alphas"),
        (args.server_lr, "server_lr"),
    ):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    cfg = load_config(JobConfig, yaml_path=args.config, overrides=overrides)
    server = Server.init(args.model, args.base, args.workdir, cfg)
    print(
        f"initialised job {server.state.job_id} in {args.workdir} (round 1, m={cfg.copies}, kappa={cfg.kappa})"
    )
    gates = [h for h in server.state.history if h.get("event") == "gate"]
    if gates:
        from mpu.server.gate import GateResult

        fields = {k: v for k, v in gates[-1].items() if k not in ("round", "event")}
        print(f"function-preservation gate passed: {GateResult(**fields).describe()}")
    else:
        print("function-preservation gate: not run (gate=false or reparameterize=false)")
    return 0


def _publish(args: argparse.Namespace) -> int:
    from mpu.server.job import Server

    server = Server(args.workdir)
    paths = server.publish(args.out, progress=not args.quiet)
    print(f"round {server.round}: published {len(paths)} copies")
    for p in paths:
        print(f"  {p}")
    return 0


def _aggregate(args: argparse.Namespace) -> int:
    from mpu.server.job import Server

    server = Server(args.workdir)
    stats = server.aggregate(args.deltas, progress=not args.quiet)
    print(
        f"aggregated round {server.round - 1}: |mean update| = {stats['mean_update_norm']:.4g}; now at round {server.round}"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from mpu.server.job import Server

    out = Server(args.workdir).export(args.out, dtype=args.dtype)
    print(f"exported the current model to {out}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from mpu.server.job import Server

    server = Server(args.workdir)
    published = bool(server.state.copy_records(server.round))
    info = {
        "job_id": server.state.job_id,
        "round": server.round,
        "round_published": published,
        "copies": server.cfg.copies,
        "kappa": server.cfg.kappa,
        "history": [
            {k: v for k, v in h.items() if k in ("round", "event", "mean_update_norm")}
            for h in server.state.history
        ],
    }
    print(json.dumps(info, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    server = sub.add_parser(
        "server", help="model owner: publish perturbed copies, aggregate updates"
    )
    ssub = server.add_subparsers(dest="server_command", metavar="ACTION", required=True)

    from mpu.config import describe
    from mpu.server.config import JobConfig

    p = ssub.add_parser(
        "init",
        help="start a job: check model and base, create the secret state",
        description="Create a server workdir for one unlearning job: check the model against "
        "the public base, run the function-preservation gate and draw the secret key "
        "(docs/protocol.md).",
        epilog="settings (key=value):\n" + describe(JobConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help="Hugging Face folder of the model to unlearn (θ_1)"
    )
    p.add_argument(
        "--base", required=True, help="public pre-fine-tuning checkpoint (σ calibration)"
    )
    p.add_argument("--workdir", required=True, help="server workdir (created, mode 0700)")
    p.add_argument("--copies", type=int, help="m, copies per round (default 2)")
    p.add_argument("--kappa", type=float, help="κ, relative noise level (default 0.01)")
    p.add_argument("--alphas", help="'linspace' (default), 'random' or comma-separated α")
    p.add_argument("--server-lr", type=float, help="η, server step size (default 1.0)")
    p.add_argument("--config", help="YAML recipe with JobConfig keys")
    p.add_argument(
        "overrides", nargs="*", help="key=value overrides of JobConfig (e.g. angles=quarter_turn)"
    )
    p.set_defaults(handler=_init)

    p = ssub.add_parser("publish", help="write the current round's copies (Hugging Face folders)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="folder that receives copy-1 … copy-M")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_publish)

    p = ssub.add_parser(
        "aggregate", help="validate, invert and harmonically aggregate the round's deltas"
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("deltas", nargs="+", help="one delta file per copy of the round")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_aggregate)

    p = ssub.add_parser("export", help="write the current model as a Hugging Face folder")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: the input checkpoint's)")
    p.set_defaults(handler=_export)

    p = ssub.add_parser("status", help="round and history of a job (no secrets)")
    p.add_argument("--workdir", required=True)
    p.set_defaults(handler=_status)
