"""The experiment's evaluations: OpenUnlearning's TOFU suite on a model folder, reused when
its `TOFU_EVAL.json` already exists (a rerun evaluates nothing twice), and shared between run
folders through a content-addressed cache: the reproduction grid's cells all evaluate the same
target and retain models, and a model's evaluation depends only on its files, the data and the
settings (`MPU_CACHE/evals`, keyed by their SHA-256)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _hash_files(h, root: Path) -> None:
    """Fold every file below `root` into `h`: its relative path and its SHA-256."""
    from mpu.io.checkpoint import sha256_file

    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root)}\0{sha256_file(path)}\n".encode())


def eval_key(model_dir: Path, data: str, settings: dict) -> str:
    """SHA-256 over the model folder's files, the data folder's files and the settings."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    _hash_files(h, Path(model_dir))
    if Path(data).is_dir():
        _hash_files(h, Path(data))
    else:
        h.update(str(data).encode())
    return h.hexdigest()


def _settings(cfg: Any, device: str) -> dict:
    """Everything besides the files that changes an evaluation's numbers (or their last bits)."""
    import torch

    from mpu.eval.tofu import DEFAULT_METRICS

    code = hashlib.sha256()
    package = Path(__file__).resolve().parents[1]  # the mpu package
    for source in [*sorted((package / "eval").glob("*.py")), package / "text.py"]:
        code.update(source.read_bytes())
    return {
        "evaluation_code": code.hexdigest(),
        "torch": torch.__version__,
        "device": device,
        "forget_split": cfg.forget_split,
        "batch_size": cfg.eval_batch_size,
        "max_new_tokens": cfg.eval_max_new_tokens,
        "limit": cfg.eval_limit,
        "prompt": cfg.prompt,
        "metrics": list(DEFAULT_METRICS),
    }


def _cached(cfg: Any, model_dir: Path, data: str, device: str) -> tuple[Path | None, dict | None]:
    """The shared cache file for this evaluation and its results, if stored (None when off)."""
    from mpu.errors import MPUError
    from mpu.eval.io import read_eval_log
    from mpu.io.cache import cache_dir

    if not getattr(cfg, "eval_cache", False):
        return None, None
    key = eval_key(model_dir, data, _settings(cfg, device))
    path = cache_dir() / "evals" / key[:2] / key / "TOFU_EVAL.json"
    if not path.is_file():
        return path, None
    try:
        return path, read_eval_log(path)
    except MPUError as e:  # a damaged entry is recomputed, never trusted
        log.warning("ignoring a damaged cached evaluation: %s", e)
        return path, None


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
    device = resolve_device(cfg.eval_device, "evaluation")
    shared, stored = _cached(cfg, model_dir, data, str(device))
    torch.manual_seed(0)
    model, tokenizer = load_model(model_dir, device=device)
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
        precomputed=previous or stored,  # forget quality etc. are recomputed from them
        progress=cfg.progress,
        prompt=cfg.prompt,
    )
    write_eval(results, path, summary_keys=list(DEFAULT_METRICS))
    if shared is not None and stored is None:
        write_eval(results, shared, summary_keys=list(DEFAULT_METRICS))
    return read_eval_log(path), time.perf_counter() - t
