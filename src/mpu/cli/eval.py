"""`mpu eval --model DIR --data DIR --out FILE [key=value ...]`: OpenUnlearning-schema metrics of
a Hugging Face model folder, written as `{TOFU|MUSE|LMEval}_EVAL.json` + `_SUMMARY.json`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# legacy flags, each the same as a key=value setting
_FLAG_KEYS = {
    "benchmark": "benchmark",
    "forget_split": "forget_split",
    "holdout_split": "holdout_split",
    "question_key": "question_key",
    "batch_size": "batch_size",
    "limit": "limit",
    "device": "device",
    "dtype": "dtype",
}


def _config(args: argparse.Namespace):
    from mpu.config import load_config
    from mpu.eval.config import EvalConfig

    overrides = [
        f"{key}={getattr(args, flag)}"
        for flag, key in _FLAG_KEYS.items()
        if getattr(args, flag) is not None
    ]
    if args.metrics:
        overrides.append(f"metrics=[{args.metrics}]")
    overrides += [f"flags.{item}" for item in args.set or []]
    return load_config(EvalConfig, overrides=[*overrides, *args.overrides])


def _benchmark_of(cfg, data: str) -> str:
    import re

    from mpu.errors import ConfigError, DataError

    if not Path(data).exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", data):
        raise DataError(f"{data}: no such folder (a hub id looks like owner/name)")
    manifest = Path(data) / "manifest.json"
    declared = None
    if manifest.is_file():
        try:
            declared = json.loads(manifest.read_text(encoding="utf-8")).get("benchmark")
        except ValueError:
            declared = None
    if cfg.benchmark and declared and declared != cfg.benchmark:
        raise ConfigError(f"benchmark={cfg.benchmark} but {manifest} says the data is {declared!r}")
    bench = cfg.benchmark or declared
    if bench is None:
        raise ConfigError(
            f"benchmark not set and {manifest} does not name one (benchmark=tofu|muse|wmdp)"
        )
    return bench


def _eval(args: argparse.Namespace) -> int:
    import torch

    from mpu.eval.io import load_model, read_eval_log, write_eval

    cfg = _config(args)
    bench = _benchmark_of(cfg, args.data)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, device=device, dtype=cfg.dtype)
    reference = (
        load_model(args.reference_model, device=device, dtype=cfg.dtype)[0]
        if args.reference_model
        else None
    )
    retain_logs = read_eval_log(args.retain_logs) if args.retain_logs else None
    previous = read_eval_log(args.out) if args.reuse and Path(args.out).is_file() else None
    common = dict(retain_logs=retain_logs, metrics=cfg.metrics, reference_model=reference,
                  flags=cfg.flags, limit=cfg.limit, precomputed=previous,
                  progress=not args.quiet, prompt=cfg.prompt)  # fmt: skip
    start = time.perf_counter()
    if bench == "tofu":
        from mpu.data import tofu_splits
        from mpu.eval.tofu import DEFAULT_METRICS, evaluate_tofu

        results = evaluate_tofu(
            model, tokenizer, args.data, forget_split=cfg.forget_split,
            holdout_split=cfg.holdout_split or tofu_splits(cfg.forget_split).holdout,
            batch_size=cfg.batch_size or 32, question_key=cfg.question_key,
            max_new_tokens=cfg.max_new_tokens, **common,
        )  # fmt: skip
        summary = list(cfg.metrics or DEFAULT_METRICS)
    elif bench == "muse":
        from mpu.eval.muse import DEFAULT_METRICS, evaluate_muse

        results = evaluate_muse(
            model, tokenizer, args.data, batch_size=cfg.batch_size or 16, **common
        )
        summary = list(cfg.metrics or DEFAULT_METRICS)
    else:
        from mpu.eval.wmdp import evaluate_wmdp

        present = sorted(p.name for p in Path(args.data).glob("wmdp-*") if p.is_dir())
        configs = cfg.metrics or present or ["wmdp-bio", "wmdp-chem", "wmdp-cyber"]
        results = evaluate_wmdp(model, tokenizer, args.data, configs=configs,
                                batch_size=cfg.batch_size or 8, limit=cfg.limit,
                                progress=not args.quiet)  # fmt: skip
        summary = sorted(k for k in results if not k.startswith("_"))
    seconds = time.perf_counter() - start
    eval_path, summary_path = write_eval(results, args.out, summary_keys=summary)
    print(f"evaluated {args.model} on {bench} ({args.data}) in {seconds:.1f} s")
    for key, value in json.loads(summary_path.read_text(encoding="utf-8")).items():
        print(f"  {key:28s} {value}")
    print(f"wrote {eval_path} and {summary_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` command."""
    from mpu.config import describe
    from mpu.eval.config import EvalConfig

    p = subparsers.add_parser(
        "eval",
        help="evaluate a model folder on TOFU / MUSE / WMDP (OpenUnlearning metrics)",
        description="Compute OpenUnlearning's metrics for a Hugging Face model folder and write "
        "them in its schema ({'agg_value', 'value_by_index'} per metric, keys as in its "
        "TOFU_EVAL.json) plus a summary file beside --out. A retain model's log (--retain-logs) "
        "enables forget_quality and the reference AUC of privleak. Metric definitions: "
        "docs/metrics.md.",
        epilog="settings (key=value; nested with dots):\n" + describe(EvalConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="Hugging Face model folder (with tokenizer)")
    p.add_argument(
        "--data", required=True, help="data folder (DIR/{config}/{split}.jsonl) or hub id"
    )
    p.add_argument("--out", required=True, help="result file, e.g. run/TOFU_EVAL.json")
    p.add_argument("--retain-logs", help="the retain model's TOFU_EVAL.json / MUSE_EVAL.json")
    p.add_argument("--reference-model", help="model folder for the mia_reference attack")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse metrics already in --out when made with the same prompt format (as "
        "OpenUnlearning does without overwrite); forget_quality, privleak and model_utility "
        "are always recomputed",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--benchmark", help="same as benchmark=…")
    p.add_argument("--forget-split", help="same as forget_split=…")
    p.add_argument("--holdout-split", help="same as holdout_split=…")
    p.add_argument("--question-key", help="same as question_key=…")
    p.add_argument("--metrics", help="comma-separated metric keys (same as metrics=[…])")
    p.add_argument("--batch-size", type=int, help="same as batch_size=…")
    p.add_argument("--limit", type=int, help="same as limit=…")
    p.add_argument("--device", help="same as device=…")
    p.add_argument("--dtype", help="same as dtype=…")
    p.add_argument("--set", action="append", metavar="FLAG=VALUE", help="same as flags.FLAG=VALUE")
    p.add_argument("overrides", nargs="*", help="key=value settings (listed below)")
    p.set_defaults(handler=_eval)
