"""mpu.data — benchmark data: the synthetic generators and the loaders' public entry points.

`load_split(source, config, split)` reads TOFU / MUSE / WMDP from a hub id or a local folder
(the file reading itself lives in the foundation, `mpu.io.datasets`, so evaluation can read
rows without depending on this package); `tofu_splits("forget10")` names a forget set's
retain and holdout splits; `make_dataset(benchmark, out_dir, seed)` writes a synthetic
stand-in in the same layout.
"""

from __future__ import annotations

from pathlib import Path

from mpu.io.datasets import (
    TofuSplits,
    is_tofu_forget,
    load_idk,
    load_split,
    read_manifest,
    require_fields,
    schema_for,
    tofu_splits,
)

__all__ = [
    "BENCHMARKS",
    "TofuSplits",
    "is_tofu_forget",
    "load_idk",
    "load_split",
    "make_dataset",
    "read_manifest",
    "require_fields",
    "schema_for",
    "tofu_splits",
]

BENCHMARKS = ("tofu", "muse", "wmdp")


def make_dataset(benchmark: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Generate a synthetic benchmark into `out_dir` (manifest, per-split jsonl, idk for TOFU)."""
    from mpu.data import synth_corpora, synth_tofu
    from mpu.data.store import write_dataset
    from mpu.errors import ConfigError

    if benchmark == "tofu":
        splits = synth_tofu.generate_tofu(seed)
        return write_dataset(
            out_dir,
            "tofu",
            splits,
            seed=seed,
            generator_version=synth_tofu.GENERATOR_VERSION,
            idk=synth_tofu.idk_answers(),
        )
    if benchmark == "muse":
        splits = synth_corpora.generate_muse(seed)
        version = synth_corpora.MUSE_VERSION
    elif benchmark == "wmdp":
        splits = synth_corpora.generate_wmdp(seed)
        version = synth_corpora.WMDP_VERSION
    else:
        raise ConfigError(f"unknown benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    return write_dataset(out_dir, benchmark, splits, seed=seed, generator_version=version)
