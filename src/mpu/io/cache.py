"""Where MPU keeps what it builds: `$MPU_CACHE`, default `~/.cache/mpu`.

Everything cached lives under it — imported and prepared models, generated data sets, and the
`datasets` library's own cache (`MPU_CACHE/datasets`), so one variable moves or clears it all.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("MPU_CACHE", Path.home() / ".cache" / "mpu"))


def datasets_cache() -> str:
    """The `cache_dir` passed to every `datasets.load_dataset` call."""
    return str(cache_dir() / "datasets")
