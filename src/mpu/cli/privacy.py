"""`mpu privacy audit`, `mpu verify`, `mpu certify`: what leaked, what happened, and is it done."""

from __future__ import annotations

import argparse
from pathlib import Path


def _audit(args: argparse.Namespace) -> int:
    from mpu.server.leakage import audit, markdown

    result = audit(
        args.workdir,
        round_=args.round,
        copies_dir=args.copies,
        deltas=args.deltas,
        data=args.data,
        forget_split=args.forget_split,
        limit=args.limit,
        knowledge=args.knowledge,
        knowledge_limit=args.knowledge_limit,
        out=args.out,
    )
    print(markdown(result))
    print(f"written: {Path(args.out) / 'leakage.json'}, {Path(args.out) / 'leakage.md'}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from mpu.io.checkpoint import atomic_write_json
    from mpu.server.plan import describe, plan

    knowledge = args.knowledge or args.data
    if knowledge is None:
        from mpu.errors import ConfigError

        raise ConfigError("mpu privacy plan needs --data (its full split) or --knowledge")
    result = plan(args.model, args.base, args.target_leakage, knowledge, copies=args.copies,
                  residual=args.residual, limit=args.limit, verify=not args.no_check,
                  settings=args.settings, min_capability=args.min_capability)  # fmt: skip
    print(describe(result))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"written: {args.out}")
    return 0 if result["recommendation"] is not None else 1


def _verify(args: argparse.Namespace) -> int:
    from mpu.server.audit_log import verify

    res = verify(
        args.workdir,
        deltas=args.deltas,
        receipts=args.receipts,
        public_key=args.public_key,
        replay=not args.chain_only,
    )
    what = (
        "chain and signatures"
        if args.chain_only
        else "chain, signatures, artifacts and every Post-Process"
    )
    print(f"verified: {res['entries']} entries ({what}); {res['rounds_replayed']} rounds recomputed "
          f"bit for bit; {res['receipts']} client receipts")  # fmt: skip
    print(f"signed by {res['public_key']}; head {res['head']}")
    return 0


def _certify(args: argparse.Namespace) -> int:
    from mpu.config import load_config
    from mpu.eval.certificate import Thresholds, certify
    from mpu.eval.io import read_eval_log
    from mpu.io.checkpoint import atomic_write_json

    def log_of(p: str) -> dict:
        path = Path(p)
        if path.is_dir():
            path = next(iter(sorted(path.glob("*_EVAL.json"))), path / "TOFU_EVAL.json")
        return read_eval_log(path)

    thresholds = load_config(Thresholds, overrides=list(args.overrides))
    leakage = None
    if args.leakage:
        from mpu.server.leakage import read, summary

        audited = read(Path(args.leakage))
        if args.workdir:
            _same_job(audited, Path(args.workdir), args.leakage)
        leakage = summary(audited)
    transcript = None
    if args.workdir:
        from mpu.server.audit_log import transcript as log_of_job

        log = log_of_job(Path(args.workdir))
        entries = log.check()
        transcript = {"path": str(log.path), "entries": len(entries), "head": log.head(),
                      "public_key": entries[0]["public_key"],
                      "checked": "chain and signatures (run `mpu verify` to recompute every round)"}  # fmt: skip
    cert = certify(log_of(args.eval), log_of(args.original), thresholds=thresholds,
                   leakage=leakage, dp_epsilon=args.epsilon, dp_delta=args.delta,
                   transcript=transcript)  # fmt: skip
    import json

    json.dumps(cert, allow_nan=False)  # strict JSON: every number the checks let through is finite
    atomic_write_json(args.out, cert)
    print(f"{cert['statement']} -> {args.out}")
    for c in cert["checks"]:
        mark = {True: "pass", False: "FAIL", None: "n/a "}[c["passed"]]
        value = "—" if c["value"] is None else f"{c['value']:.4g}"
        print(f"  [{mark}] {c['check']} = {value} (needs {c['threshold']})")
    return 0 if cert["safely_unlearned"] else 1


def _same_job(audited: dict, workdir: Path, where: str) -> None:
    """A leakage audit certified beside a workdir must be of that workdir's job."""
    from mpu.errors import DataError
    from mpu.server.state import load_state

    job = load_state(workdir).job_id
    if audited.get("job_id") != job:
        raise DataError(f"{where}: the audit is of job {audited.get('job_id')!r}, the workdir's "
                        f"job is {job!r}")  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("privacy", help="measure what a job leaks (leakage audit)")
    psub = group.add_subparsers(dest="privacy_command", metavar="ACTION", required=True)
    _register_audit(psub)
    _register_plan(psub)
    _register_verify(sub)
    _register_certify(sub)


def _register_audit(psub: argparse._SubParsersAction) -> None:
    p = psub.add_parser(
        "audit",
        help="run a curious client's and server's attacks on a round; write leakage.json/md",
        description="Attack a published round as a curious party would and measure the result "
        "against the truth the server holds (docs/threat-model.md): how close one copy, or all "
        "m combined, gets to θ with and without the public base; and, from the updates, which "
        "forget-set tokens and members they reveal. Run it on the server's workdir.",
    )
    p.add_argument("--workdir", required=True, help="the server's workdir")
    p.add_argument("--round", type=int, help="round to audit (default: the latest published)")
    p.add_argument("--copies", help="folder holding the round's copy-* (default: regenerate them)")
    p.add_argument("--deltas", nargs="*", help="the round's update files (server's view)")
    p.add_argument("--data", help="TOFU data folder: θ̂'s benchmark numbers, tokens, membership")
    p.add_argument("--forget-split", default="forget10", help="the client's forget split")
    p.add_argument("--limit", type=int, default=50, help="rows per split for the benchmark numbers")
    p.add_argument(
        "--knowledge",
        help="θ's fine-tuning data for the functional leakage: a data "
        "folder (its `full` split) or one split's folder (default: --data's full split)",
    )
    p.add_argument(
        "--knowledge-limit",
        type=int,
        default=200,
        help="items of the knowledge data to score, spread over it (0 = all)",
    )
    p.add_argument("--out", required=True, help="folder for leakage.json and leakage.md")
    p.set_defaults(handler=_audit)


def _register_plan(psub: argparse._SubParsersAction) -> None:
    from mpu.server.plan import MIN_CAPABILITY  # no torch: plan imports it where it scores

    p = psub.add_parser(
        "plan",
        help="the smallest κ whose copies leak at most a target, measured on your model",
        description="Publish round 1 of a job at a ladder of κ on your own model and base, score "
        "the functional leakage of the copies (no client runs), and recommend the smallest κ "
        "whose round leaks at most --target-leakage (docs/threat-model.md). Exit 1 when no κ "
        "of the ladder reaches it.",
    )
    p.add_argument("--model", required=True, help="θ: the fine-tuned model folder")
    p.add_argument("--base", required=True, help="the public base θ was fine-tuned from")
    p.add_argument("--target-leakage", type=float, required=True, help="largest acceptable L")
    p.add_argument("--data", help="TOFU data folder (its full split is θ's knowledge)")
    p.add_argument("--knowledge", help="θ's fine-tuning data, if not --data's full split")
    p.add_argument("--copies", type=int, default=4, help="m (default 4, the job default)")
    p.add_argument("--residual", type=float, default=1.0, help="ρ (default 1)")
    p.add_argument("--limit", type=int, default=100, help="knowledge items scored per copy")
    p.add_argument("--no-check", action="store_true", help="skip publishing at the result")
    p.add_argument("--min-capability", type=float, default=MIN_CAPABILITY,
                   help="never recommend a κ whose weakest copy keeps less than this share of "
                   "θ's answer probability on general questions (world_facts, real_authors "
                   f"beside the data; default {MIN_CAPABILITY:g}, 0: no check)")  # fmt: skip
    p.add_argument("--out", help="write the plan and its evidence as JSON")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                   help="other job settings every publication uses (e.g. emulator=layer_drop "
                   "emulator_drop=4 emulator_distill_steps=300)")  # fmt: skip
    p.set_defaults(handler=_plan)


def _register_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="check a job's signed transcript and recompute every round from it",
        description="Check the hash chain and Ed25519 signatures of W/audit.log, every artifact "
        "against its SHA-256 commitment, regenerate every copy from the key and recompute every "
        "Post-Process from the logged updates, bit for bit (docs/audit-log.md). A tamper-evident "
        "transcript, not a zero-knowledge proof.",
    )
    p.add_argument("--workdir", required=True, help="the server's workdir")
    p.add_argument("--deltas", nargs="*", default=[], help="folders to look in for moved updates")
    p.add_argument("--receipts", nargs="*", default=[], help="client receipt files or folders")
    p.add_argument("--public-key", help="the server key to pin (hex); default W/audit.pub")
    p.add_argument("--chain-only", action="store_true", help="skip the recomputation")
    p.set_defaults(handler=_verify)


def _register_certify(sub: argparse._SubParsersAction) -> None:
    from mpu.config import describe
    from mpu.eval.certificate import Thresholds

    p = sub.add_parser(
        "certify",
        help="state whether a model is safely unlearned, under documented thresholds",
        description="Write certificate.json: forget quality, membership AUC and utility kept "
        "against stated thresholds, with the leakage figures, the DP ε and the transcript's head "
        "hash (docs/certificate.md). Exit 0 when certified, 1 when not.",
        epilog="thresholds (key=value):\n" + describe(Thresholds),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--eval", required=True, help="the unlearned model's TOFU_EVAL.json (or its folder)"
    )
    p.add_argument("--original", required=True, help="the original model's TOFU_EVAL.json")
    p.add_argument("--leakage", help="leakage.json of the job's audit")
    p.add_argument("--workdir", help="the server's workdir (transcript head hash)")
    p.add_argument("--epsilon", type=float, help="DP ε of the client's updates, if any")
    p.add_argument("--delta", type=float, help="DP δ")
    p.add_argument("--out", default="certificate.json")
    p.add_argument("overrides", nargs="*", help="threshold overrides, key=value")
    p.set_defaults(handler=_certify)
