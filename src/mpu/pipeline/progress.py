"""One progress display for a phase of independent jobs: how many are done, running and queued,
and what each running job is doing (its round, copy and step, or its evaluation).

Jobs report through `mpu.logs.progress(...)`; in worker processes those records travel to the
parent with the log records, so one bar shows every process's work and every log line keeps
the job's label.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mpu.logs import PROGRESS


class JobBoard:
    """A tqdm bar over jobs, its postfix naming each running job's current phase."""

    def __init__(self, names: Sequence[str], *, enabled: bool, desc: str = "jobs"):
        from mpu.logs import progress_bar

        self.total = len(names)
        self.queued = list(names)
        self.running: dict[str, str] = {}
        self.done = 0
        self.bar = progress_bar(
            total=self.total, desc=desc, unit="job", disable=not enabled, leave=True
        )
        self.handler = _BoardHandler(self)

    def update(self, job: str, phase: str, done: int | None, total: int | None) -> None:
        if job in self.queued:
            self.queued.remove(job)
        self.running[job] = f"{phase} {done}/{total}" if total else phase
        self._refresh()

    def finished(self, job: str) -> None:
        self.running.pop(job, None)
        if job in self.queued:
            self.queued.remove(job)
        self.done += 1
        self.bar.update(1)
        self._refresh()

    def _refresh(self) -> None:
        parts = [f"{j}: {p}" for j, p in sorted(self.running.items())]
        queued = f"{len(self.queued)} queued" if self.queued else ""
        self.bar.set_postfix_str(" | ".join([*parts, queued] if queued else parts), refresh=True)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> JobBoard:
        logging.getLogger(PROGRESS).addHandler(self.handler)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(PROGRESS).removeHandler(self.handler)
        self.close()


class _BoardHandler(logging.Handler):
    def __init__(self, board: JobBoard):
        super().__init__(logging.INFO)
        self.board = board

    def emit(self, record: logging.LogRecord) -> None:
        info = getattr(record, "progress", None)
        if record.name == PROGRESS and info is not None:
            phase, done, total = info
            self.board.update(getattr(record, "job", "") or "?", phase, done, total)
