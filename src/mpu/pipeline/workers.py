"""One worker pool for the pipeline: independent jobs in spawned processes that stop when told.

`run_jobs` runs `fn(job)` for every job, in `workers` processes of `threads` torch threads
each (or in this process when `workers == 1`), reports each result as it arrives, and on a
failure, Ctrl-C or SIGTERM terminates every worker at once (no orphan keeps training) and
raises: `Interrupted` for a signal (the CLI prints it as one line), the job's own error
otherwise. Workers' log records and progress events travel to this process, which prints the
records in the common format and feeds the progress display. Jobs write their outputs
atomically, so a rerun resumes from the finished ones.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterable
from typing import Any

from mpu.errors import Interrupted


def _init(threads: int, quiet: bool, queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; workers are terminated
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"
    if queue is not None:
        from mpu.logs import forward_to

        forward_to(queue)
    import torch

    torch.set_num_threads(threads)


def _raise_interrupted(signum, _frame) -> None:
    raise Interrupted(f"stopped by {signal.Signals(signum).name}")


def run_jobs(
    fn: Callable[[Any], Any],
    jobs: Iterable[Any],
    *,
    workers: int,
    threads: int = 1,
    quiet: bool = True,
    on_done: Callable[[Any, Any], None] | None = None,
    board=None,
    worker_log_level: int = logging.WARNING,
) -> list[Any]:
    """Results of `fn(job)` in job order; `on_done(job, result)` as each one finishes.

    `board` (a `JobBoard`) receives the jobs' progress; workers' log records at or above
    `worker_log_level` are printed here.
    """
    jobs = list(jobs)
    results: dict[int, Any] = {}
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        if workers <= 1 or len(jobs) <= 1:
            # one job left of a parallel run (a resumed run) computes with a worker's threads:
            # another thread count sums in another order, and its bits would differ
            with _torch_threads(threads if workers > 1 else None):
                for i, job in enumerate(jobs):
                    results[i] = fn(job)
                    if on_done:
                        on_done(job, results[i])
        else:
            _in_processes(
                fn, jobs, workers, threads, quiet, on_done, results, board, worker_log_level
            )
    except KeyboardInterrupt:
        raise Interrupted("stopped by SIGINT") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return [results[i] for i in range(len(jobs))]


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """torch's intra-op threads set to `threads` inside, restored after (None: unchanged)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _quiet_resource_tracker() -> None:
    """Workers stopped mid-job (Ctrl-C, SIGTERM) cannot release the named semaphores they
    hold; multiprocessing's resource tracker unlinks them at exit and warns about each on
    stderr, under the one-line stop message. The tracker takes its warning filters from this
    process's -W options when it starts, so the cleanup stays and the warning goes."""
    import sys

    quiet = "ignore:resource_tracker:UserWarning"
    if quiet not in sys.warnoptions:
        sys.warnoptions.append(quiet)


def _in_processes(fn, jobs, workers, threads, quiet, on_done, results, board, level) -> None:
    import logging.handlers
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from mpu.logs import console_handler

    _quiet_resource_tracker()
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    handlers = [console_handler(level)] + ([board.handler] if board is not None else [])
    listener = logging.handlers.QueueListener(queue, *handlers, respect_handler_level=True)
    listener.start()
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=ctx,
        initializer=_init,
        initargs=(threads, quiet, queue),
    )
    futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                i = futures[fut]
                results[i] = fut.result()  # a worker's error is re-raised here
                if on_done:
                    on_done(jobs[i], results[i])
    except BaseException:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()  # no orphans: stop the training now, not after the running jobs
        # the workers are gone, so this returns at once; it also releases the pool's queues
        # (named semaphores), which the interpreter would otherwise report as leaked at exit
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        listener.stop()
        queue.close()
        queue.join_thread()
    pool.shutdown(wait=True)
