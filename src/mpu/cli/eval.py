"""`mpu eval --model DIR --data DIR --benchmark tofu|muse|wmdp --out FILE`: OpenUnlearning-schema
metrics of a Hugging Face model folder, written as `{TOFU|MUSE|LMEval}_EVAL.json` + `_SUMMARY.json`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

BENCHMARKS = ("tofu", "muse", "wmdp")


def _benchmark_of(args: argparse.Namespace) -> str:
    from mpu.errors import ConfigError

    manifest = Path(args.data) / "manifest.json"
    declared = None
    if manifest.is_file():
        try:
            declared = json.loads(manifest.read_text(encoding="utf-8")).get("benchmark")
        except ValueError:
            declared = None
    if args.benchmark and declared and declared != args.benchmark:
        raise ConfigError(
            f"--benchmark {args.benchmark} but {manifest} says the data is {declared!r}"
        )
    bench = args.benchmark or declared
    if bench is None:
        raise ConfigError(f"--benchmark not given and {manifest} does not name one")
    return bench


def _eval(args: argparse.Namespace) -> int:
    import torch

    from mpu.config import load_config
    from mpu.eval.flags import EvalFlags
    from mpu.eval.io import load_model, read_eval_log, write_eval

    bench = _benchmark_of(args)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    flags = load_config(EvalFlags, overrides=args.set or [])
    torch.manual_seed(0)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    reference = (
        load_model(args.reference_model, device=args.device, dtype=args.dtype)[0]
        if args.reference_model
        else None
    )
    retain_logs = read_eval_log(args.retain_logs) if args.retain_logs else None
    metrics = args.metrics.split(",") if args.metrics else None
    previous = read_eval_log(args.out) if args.reuse and Path(args.out).is_file() else None
    start = time.perf_counter()
    if bench == "tofu":
        from mpu.eval.tofu import DEFAULT_METRICS, evaluate_tofu

        results = evaluate_tofu(
            model,
            tokenizer,
            args.data,
            forget_split=args.forget_split,
            holdout_split=args.holdout_split,
            retain_logs=retain_logs,
            metrics=metrics,
            batch_size=args.batch_size or 32,
            question_key=args.question_key,
            reference_model=reference,
            flags=flags,
            limit=args.limit,
            precomputed=previous,
            progress=not args.quiet,
        )
        summary = [m for m in (metrics or DEFAULT_METRICS)]
    elif bench == "muse":
        from mpu.eval.muse import DEFAULT_METRICS, evaluate_muse

        results = evaluate_muse(
            model,
            tokenizer,
            args.data,
            retain_logs=retain_logs,
            metrics=metrics,
            batch_size=args.batch_size or 16,
            reference_model=reference,
            flags=flags,
            limit=args.limit,
            precomputed=previous,
            progress=not args.quiet,
        )
        summary = [m for m in (metrics or DEFAULT_METRICS)]
    else:
        from mpu.eval.wmdp import evaluate_wmdp

        present = sorted(p.name for p in Path(args.data).glob("wmdp-*") if p.is_dir())
        configs = metrics or present or ["wmdp-bio", "wmdp-chem", "wmdp-cyber"]
        results = evaluate_wmdp(
            model,
            tokenizer,
            args.data,
            configs=configs,
            batch_size=args.batch_size or 8,
            limit=args.limit,
            progress=not args.quiet,
        )
        summary = sorted(results)
    seconds = time.perf_counter() - start
    eval_path, summary_path = write_eval(results, args.out, summary_keys=summary)
    print(f"evaluated {args.model} on {bench} ({args.data}) in {seconds:.1f} s")
    for key, value in json.loads(summary_path.read_text(encoding="utf-8")).items():
        print(f"  {key:28s} {value}")
    print(f"wrote {eval_path} and {summary_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` command."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model folder on TOFU / MUSE / WMDP (OpenUnlearning metrics)",
        description="Compute OpenUnlearning's metrics for a Hugging Face model folder and write "
        "them in its schema ({'agg_value', 'value_by_index'} per metric, keys as in its "
        "TOFU_EVAL.json) plus a summary file beside --out. A retain model's log (--retain-logs) "
        "enables forget_quality and the reference AUC of privleak.",
    )
    p.add_argument("--model", required=True, help="Hugging Face model folder (with tokenizer)")
    p.add_argument(
        "--data", required=True, help="data folder (DIR/{config}/{split}.jsonl) or hub id"
    )
    p.add_argument("--benchmark", choices=BENCHMARKS, help="default: DIR/manifest.json's")
    p.add_argument("--out", required=True, help="result file, e.g. run/TOFU_EVAL.json")
    p.add_argument("--retain-logs", help="the retain model's TOFU_EVAL.json / MUSE_EVAL.json")
    p.add_argument(
        "--forget-split", default="forget10", help="TOFU forget split (default forget10)"
    )
    p.add_argument("--holdout-split", help="TOFU holdout split (default: matches the forget split)")
    p.add_argument(
        "--question-key",
        default="question",
        help="TOFU question field for forget/retain metrics ('paraphrased_question' for the variant)",
    )
    p.add_argument("--metrics", help="comma-separated metric keys (WMDP: configs); default: suite")
    p.add_argument("--reference-model", help="model folder for the mia_reference attack")
    p.add_argument("--batch-size", type=int, help="default: upstream's (TOFU 32, MUSE 16)")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse metrics already in --out (as OpenUnlearning does without overwrite); "
        "forget_quality, privleak and model_utility are always recomputed",
    )
    p.add_argument("--limit", type=int, help="evaluate only the first N rows of each split")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--device", help="cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)"
    )
    p.add_argument("--dtype", default="float32", help="weights dtype (float32, bfloat16)")
    p.add_argument(
        "--set",
        action="append",
        metavar="FLAG=VALUE",
        help="compatibility flag, e.g. attention_mask=padding, es_floor=false (METRICS.md §9)",
    )
    p.set_defaults(handler=_eval)
