"""Overlap reading, computing and writing of tensors without losing the flat-memory property.

`ordered_map(fn, items, cost=…, budget=…)` runs `fn(item)` on a small thread pool (torch and
file I/O release the GIL) and yields the results in item order, keeping at most `budget`
bytes of work in flight, so a streaming pass over a model holds a bounded window of tensors
however large the model is. The caller writes each result as it comes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    cost: Callable[[T], int],
    budget: int,
    workers: int = 2,
) -> Iterator[R]:
    """`fn` over `items` on `workers` threads (torch ops single-threaded each), in order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # `workers` tensors at once, one core each
    pending: deque[tuple[Future, int]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        queued = 0
        it = iter(items)
        exhausted = False
        while True:
            while not exhausted and (queued < budget or not pending):
                item: Any = next(it, _END)
                if item is _END:
                    exhausted = True
                    break
                size = cost(item)
                pending.append((pool.submit(fn, item), size))
                queued += size
            if not pending:
                return
            fut, size = pending.popleft()
            result = fut.result()
            queued -= size
            yield result
    finally:
        for fut, _ in pending:
            fut.cancel()
        pool.shutdown(wait=True)
        torch.set_num_threads(threads)


_END = object()


def flat_spans(numel: int, part: int) -> list[tuple[int, int]]:
    """[start, stop) spans that cover `numel` elements in parts of `part` (a multiple of 64,
    so that every span but the last starts and ends on a SIMD block boundary; a tail shorter
    than 64 joins the span before it). Elementwise torch ops and `torch.randn` from one
    generator give, span by span, the same bits as on the whole tensor (tests/io pin this)."""
    if part <= 0 or part % 64:
        raise ValueError(f"part must be a positive multiple of 64, got {part}")
    spans, start = [], 0
    while start < numel:
        stop = min(numel, start + part)
        if numel - stop < 64:
            stop = numel
        spans.append((start, stop))
        start = stop
    return spans
