"""Atomic file writes (temp file + fsync + rename), without torch.

Kept apart from `checkpoint` so that a process that only moves bytes (the data owner's Flower
ClientApp when a warm worker trains for it) does not pay a second for importing torch.
`checkpoint` re-exports both names.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes | Iterable[bytes], mode: int = 0o644) -> None:
    """Write `data` (bytes, or chunks of it) via temp file + fsync + rename; the temp file is
    created with `mode`, so a secret is never readable by others, even for a moment."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in [data] if isinstance(data, bytes | bytearray) else data:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: object, *, mode: int = 0o644, indent: int = 2) -> None:
    """Write JSON via temp file + fsync + rename, created with `mode` (0o600 for secrets)."""
    atomic_write_bytes(
        Path(path), (json.dumps(obj, indent=indent, sort_keys=True) + "\n").encode(), mode
    )
