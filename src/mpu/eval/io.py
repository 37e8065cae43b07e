"""Files around evaluation: model folders in, data rows in, reference logs in, result JSON out.

Every user-facing fault (missing tokenizer, empty split, a reference log for another benchmark
or forget set) raises an `MPUError` that names the file and what is wrong with it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mpu.errors import CheckpointError, DataError
from mpu.io.checkpoint import atomic_write_json

log = logging.getLogger("mpu.eval")

DataSource = str | Path | Mapping[str, Any] | Callable[[str, str], Any]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def load_model(path: str | Path, *, device: str | None = None, dtype: str = "float32"):
    """Load a Hugging Face model folder and its tokenizer for evaluation (eval mode).

    Raises CheckpointError when the folder, its config or its tokenizer is missing.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: model folder not found")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json, not a Hugging Face model folder")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise CheckpointError(
            f"{path}: model folder has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "evaluation needs the tokenizer the model was trained with"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # transformers raises many types here
        raise CheckpointError(f"{path}: tokenizer cannot be loaded: {exc}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    except Exception as exc:
        raise CheckpointError(f"{path}: model weights cannot be loaded: {exc}") from exc
    if device:
        model = model.to(device)
    return model.eval(), tokenizer


def get_rows(source: DataSource, config: str, split: str = "train") -> list[dict[str, Any]]:
    """Rows of (config, split) as dicts with an `index` (row position when the data has none).

    `source` is a data folder, a mapping config -> rows (or (config, split) -> rows), or a
    callable (config, split) -> rows. An empty split is a DataError.
    """
    if isinstance(source, str | Path):
        from mpu.io.datasets import load_split

        rows = load_split(source, config, split)
        where = f"{source}/{config}/{split}"
    elif isinstance(source, Mapping):
        rows = source.get((config, split), source.get(config))
        where = f"data config {config!r} split {split!r}"
        if rows is None:
            raise DataError(f"{where}: not provided (have {sorted(map(str, source))})")
    else:
        rows = source(config, split)
        where = f"data config {config!r} split {split!r}"
    out = [dict(r) for r in rows]
    if not out:
        raise DataError(f"{where}: split is empty, nothing to evaluate")
    for pos, r in enumerate(out):
        r.setdefault("index", pos)
    return out


def require(rows: Sequence[Mapping[str, Any]], fields: Sequence[str], where: str) -> None:
    """DataError naming the split and the missing field when a row lacks one."""
    for f in fields:
        if f not in rows[0]:
            raise DataError(f"{where}: rows have no field {f!r} (fields: {sorted(rows[0])})")


def read_eval_log(path: str | Path) -> dict[str, Any]:
    """Read an `{TOFU|MUSE}_EVAL.json` (ours or OpenUnlearning's)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: reference log not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a JSON evaluation log ({exc})") from None
    except RecursionError:
        raise DataError(f"{path}: nested too deeply to be an evaluation log") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: evaluation log must be a JSON object of metric -> result")
    data["_source"] = str(path)
    return data


def check_retain_logs(
    logs: Mapping[str, Any], *, required: Sequence[str], per_item: Mapping[str, Sequence[Any]] = {}
) -> None:
    """Refuse a reference log that lacks the needed metric keys or covers other items.

    `per_item` maps a metric key to the index list of the data this run evaluates; the log's
    `value_by_index` must hold exactly those items (same forget split, same size).
    """
    src = logs.get("_source", "retain logs")
    have = sorted(k for k in logs if not k.startswith("_"))
    for key in required:
        if key not in logs:
            raise DataError(
                f"{src}: reference log has no metric {key!r} (it has {have}); is it the "
                "retain model's log of this benchmark?"
            )
    for key, index in per_item.items():
        vbi = logs.get(key, {}).get("value_by_index") if isinstance(logs.get(key), dict) else None
        if not isinstance(vbi, dict):
            raise DataError(f"{src}: {key!r} has no per-item value_by_index")
        if len(vbi) != len(index) or {str(i) for i in vbi} != {str(i) for i in index}:
            raise DataError(
                f"{src}: {key!r} covers {len(vbi)} items but this evaluation has {len(index)} "
                "(different forget split or data?)"
            )
        bad = [i for i, v in vbi.items() if not isinstance(v, dict) or "score" not in v]
        if bad:
            raise DataError(f"{src}: {key!r} item {bad[0]} has no 'score'")


CHEAP_AGGREGATES = ("forget_quality", "privleak", "model_utility")


def reusable(results: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Results loaded from an EVAL.json, ready to seed a new run: digit-string item keys back to
    ints, and the cheap aggregate-only metrics (which depend on the retain logs) dropped so they
    are recomputed. Nothing is reused when the log was made with another prompt format (or
    does not say which): its numbers score other tokens."""
    if not results:
        return {}
    if results.get("_meta", {}).get("prompt_format") != meta.get("prompt_format"):
        log.warning(
            "%s: made with another (or an unrecorded) prompt format; recomputing every metric",
            results.get("_source", "previous results"),
        )
        return {}

    def keys_to_int(vbi: Mapping[str, Any]) -> dict[Any, Any]:
        return {
            int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k: v
            for k, v in vbi.items()
        }

    out: dict[str, Any] = {}
    for key, res in results.items():
        if key.startswith("_") or key in CHEAP_AGGREGATES or not isinstance(res, dict):
            continue
        res = dict(res)
        if isinstance(res.get("value_by_index"), dict):
            res["value_by_index"] = keys_to_int(res["value_by_index"])
        for split in ("forget", "holdout"):
            if isinstance(res.get(split), dict) and isinstance(
                res[split].get("value_by_index"), dict
            ):
                res[split] = {
                    **res[split],
                    "value_by_index": keys_to_int(res[split]["value_by_index"]),
                }
        out[key] = res
    return out


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x


def summary_of(results: Mapping[str, Any], keys: Sequence[str] | None = None) -> dict[str, Any]:
    """Top-level metric -> agg_value (the `{TOFU|MUSE}_SUMMARY.json` content)."""
    keys = list(keys) if keys is not None else sorted(k for k in results if not k.startswith("_"))
    return {k: _clean(results[k]["agg_value"]) for k in keys if k in results}


def write_eval(
    results: Mapping[str, Any],
    out_file: str | Path,
    *,
    summary_keys: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write the full results (keys sorted) to `out_file` and the summary beside it.

    `X_EVAL.json` gets `X_SUMMARY.json`; any other name `NAME_SUMMARY.json`.
    """
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean = _clean({k: v for k, v in results.items() if k == "_meta" or not k.startswith("_")})
    atomic_write_json(out, clean, indent=4)  # a killed run never leaves half a log
    name = (
        out.name.replace("_EVAL", "_SUMMARY") if "_EVAL" in out.name else f"{out.stem}_SUMMARY.json"
    )
    summary_path = out.with_name(name)
    summary = summary_of(clean, summary_keys)
    atomic_write_json(summary_path, summary, indent=4)
    return out, summary_path
