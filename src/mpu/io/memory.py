"""Keep streaming jobs' memory flat under glibc.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which
tensor-sized buffers come from the heap and freed ones stay resident: a publish that touches
each tensor once then grows its RSS tensor after tensor. Pinning the threshold (1 MiB) sends
every large buffer back to the OS when freed. No-op where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3


@functools.cache
def pin_mmap_threshold(threshold: int = 1 << 20) -> bool:
    """Fix glibc's mmap threshold (disables its dynamic growth); True if applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False
