"""JSON Lines records: one JSON object per line, written atomically, read back strictly."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from mpu.errors import DataError


def write_jsonl(path: Path, steps: Sequence[dict]) -> Path:
    """The records as one JSON object per line, written atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in steps:
            f.write(json.dumps(rec, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def read_jsonl(path: Path) -> list[dict]:
    """The records of a curves file; a line that is not a JSON object is an error naming it."""
    out = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{i}: not a JSON record ({exc.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}:{i}: a curve record must be a JSON object")
        out.append(rec)
    return out
