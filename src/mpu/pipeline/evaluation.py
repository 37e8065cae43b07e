"""The experiment's evaluations: OpenUnlearning's TOFU suite on a model folder, reused when
its `TOFU_EVAL.json` already exists (a rerun evaluates nothing twice)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def evaluate_run(
    cfg: Any, out: Path, name: str, model_dir: Path, data: str, retain_logs: dict | None
) -> tuple[dict, float]:
    """(results, seconds spent) for run `name`; written to OUT/eval/NAME/TOFU_EVAL.json."""
    import torch

    from mpu.data import tofu_splits
    from mpu.devices import resolve_device
    from mpu.eval.io import load_model, read_eval_log, write_eval
    from mpu.eval.tofu import DEFAULT_METRICS, evaluate_tofu

    path = out / "eval" / name / "TOFU_EVAL.json"
    previous = None
    if path.is_file():
        previous = read_eval_log(path)
        fq = (previous.get("forget_quality") or {}).get("agg_value")
        if retain_logs is None or fq is not None:
            return previous, 0.0
        # evaluated before the retain logs existed (the retain model itself): recompute
        # forget quality and privleak from the stored per-item results
    t = time.perf_counter()
    torch.manual_seed(0)
    model, tokenizer = load_model(model_dir, device=resolve_device(cfg.eval_device, "evaluation"))
    results = evaluate_tofu(
        model,
        tokenizer,
        data,
        forget_split=cfg.forget_split,
        holdout_split=tofu_splits(cfg.forget_split).holdout,
        retain_logs=retain_logs,
        batch_size=cfg.eval_batch_size,
        max_new_tokens=cfg.eval_max_new_tokens,
        limit=cfg.eval_limit,
        precomputed=previous,
        progress=cfg.progress,
        prompt=cfg.prompt,
    )
    write_eval(results, path, summary_keys=list(DEFAULT_METRICS))
    return read_eval_log(path), time.perf_counter() - t
