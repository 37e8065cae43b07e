"""The experiment's inputs: the data set and the base/target/retain models, made and cached on
first use, and the cache of their reference (retain and target) evaluations."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from mpu.errors import ConfigError
from mpu.io.checkpoint import atomic_folder

MODEL_DIRS = ("base", "target", "retain")


def resolve_inputs(cfg: Any, say) -> tuple[str, Path]:
    """(data source, models folder) of an experiment, making the embedded defaults if unset."""
    from mpu.io.cache import cache_dir

    data = cfg.data
    if data is None:
        from mpu.data import make_dataset

        data = str(cache_dir() / "data" / f"tofu-seed{cfg.seed}")
        if not (Path(data) / "manifest.json").is_file():
            say(f"making the synthetic TOFU benchmark in {data}")
            make_dataset("tofu", data, seed=cfg.seed)
        elif _lacks_alternates(Path(data)):
            # made before AltPO's splits existed: the generator writes every other split
            # byte for byte as before, so the cached models stay valid
            say(f"adding AltPO's alternate-answer splits to {data}")
            make_dataset("tofu", data, seed=cfg.seed)
    models = Path(cfg.models) if cfg.models else None
    if models is None:
        from mpu.pipeline.prepare import PrepareConfig, prepare_models

        models = cache_dir() / "models" / f"tiny-llama-{cfg.forget_split}-seed{cfg.seed}"
        prepare_models(
            PrepareConfig(
                data=data,
                out=str(models),
                forget_split=cfg.forget_split,
                seed=cfg.seed,
                progress=cfg.progress,
                prompt=cfg.prompt,
            )
        )
    for sub in MODEL_DIRS:
        if not (models / sub / "config.json").is_file():
            raise ConfigError(
                f"{models / sub}: missing; models= needs base/, target/ and retain/ model folders"
            )
    return data, models


def _lacks_alternates(data: Path) -> bool:
    import json

    counts = json.loads((data / "manifest.json").read_text()).get("counts") or {}
    return "forget01_alternate/train" not in counts


def reference_cache(cfg: Any, data: str, models: Path) -> Path | None:
    """Where the retain and target evaluations of prepared models are kept across runs.

    Only for a models folder made by `mpu model prepare` (its content hash names the models);
    the key also covers the data (path and manifest), the prompt and every evaluation setting,
    so a different suite never reuses them.
    """
    record = models / "prepare.json"
    if not record.is_file():
        return None
    manifest = Path(data) / "manifest.json"
    key = {
        "version": "reference-evals-2",
        "models": json.loads(record.read_text()).get("content_hash"),
        "data": str(data),
        "manifest": manifest.read_text() if manifest.is_file() else None,
        "forget_split": cfg.forget_split,
        "max_new_tokens": cfg.eval_max_new_tokens,
        "batch_size": cfg.eval_batch_size,
        "limit": cfg.eval_limit,
        "prompt": json.dumps(cfg.prompt.__dict__, sort_keys=True),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return models / "reference-evals" / digest[:16]


def copy_references(src: Path | None, dst: Path | None, say) -> None:
    """Copy eval/{retain,target} folders that `dst` lacks (each atomically)."""
    if src is None or dst is None:
        return
    for name in ("retain", "target"):
        if not (src / name / "TOFU_EVAL.json").is_file() or (dst / name).exists():
            continue
        try:
            with atomic_folder(dst / name, replace=False) as stage:
                shutil.copytree(src / name, stage, dirs_exist_ok=True)
        except OSError as exc:  # a read-only models folder: just do not cache
            say(f"note: reference evaluations not cached in {dst} ({exc})")
