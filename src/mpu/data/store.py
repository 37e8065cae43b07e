"""On-disk layout of a benchmark data dir, written atomically.

Layout (the contract every loader and tool relies on): `DIR/manifest.json`, one
`DIR/{config}/{split}.jsonl` per (config, split) and, for TOFU, `DIR/idk.jsonl`. Each file is
written to a temporary name and renamed, so a crash never leaves half a split behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600: data and reports are not secrets
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write one JSON object per line (UTF-8, atomic)."""
    text = "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in rows)
    return atomic_write_text(path, text)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write pretty JSON (atomic)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def split_path(root: str | Path, config: str, split: str) -> Path:
    """Where (config, split) lives inside a data dir."""
    return Path(root) / config / f"{split}.jsonl"


def write_dataset(
    root: str | Path,
    benchmark: str,
    splits: Mapping[tuple[str, str], list[dict]],
    *,
    seed: int,
    generator_version: str,
    idk: list[str] | None = None,
) -> Path:
    """Write every (config, split) and then the manifest (last, so its presence means complete)."""
    root = Path(root)
    for (config, split), rows in splits.items():
        write_jsonl(split_path(root, config, split), rows)
    if idk is not None:
        # Upstream's idk.jsonl holds one plain refusal per line, used verbatim after strip().
        atomic_write_text(root / "idk.jsonl", "".join(t.strip() + "\n" for t in idk))
    counts = {f"{c}/{s}": len(rows) for (c, s), rows in sorted(splits.items())}
    manifest = {
        "benchmark": benchmark,
        "synthetic": True,
        "seed": seed,
        "generator_version": generator_version,
        "counts": counts,
    }
    write_json(root / MANIFEST, manifest)
    return root
