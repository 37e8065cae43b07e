"""Keep streaming jobs' memory flat under glibc, without paying a page fault per 4 KiB.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
tensor-sized buffers come from the heap and freed ones stay resident: a publish that touches
each tensor once then grows its RSS tensor after tensor. Pinning the threshold (1 MiB) sends
every large buffer back to the OS when freed — and makes the next tensor's buffer a fresh
mapping whose pages fault in one by one (≈ 700 000 faults, ≈ 1 s of CPU in one SmolLM2 server
round). `reuse_freed_buffers` keeps freed buffers in the heap *during* a pass, where the
window of tensors in flight bounds the heap, and gives the heap back when the pass ends.
No-op where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
PINNED_MMAP_THRESHOLD = 1 << 20
DEFAULT_TRIM_THRESHOLD = 128 << 10  # glibc's own default
PASS_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling: tensors up to this come from the heap
PASS_TRIM_THRESHOLD = 16 << 20  # free heap kept for the next tensor, at most, per arena


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def _mallopt(param: int, value: int) -> bool:
    libc = _libc()
    return bool(libc is not None and libc.mallopt(param, value))


@contextmanager
def reuse_freed_buffers() -> Iterator[bool]:
    """Within the block, tensor buffers freed by one step are reused by the next instead of
    being unmapped and faulted in again; on exit the threshold is pinned again and the free
    heap is returned to the OS (`malloc_trim`), so the process's RSS between commands is what
    it was. Yields whether the setting applied."""
    applied = _mallopt(M_MMAP_THRESHOLD, PASS_MMAP_THRESHOLD) and _mallopt(
        M_TRIM_THRESHOLD, PASS_TRIM_THRESHOLD
    )
    try:
        yield applied
    finally:
        if _libc() is not None:
            _mallopt(M_MMAP_THRESHOLD, PINNED_MMAP_THRESHOLD)
            _mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            _libc().malloc_trim(0)
