"""One log format for every process, a job label on every line, and progress events.

`install(level)` configures the console once per process: `HH:MM:SS LEVEL [job] logger:
message`, written through tqdm so bars are not torn. A job sets its label with `job(name)`;
worker processes forward their records to the parent (`forward_to(queue)`), which prints them
with the same format. Progress is reported as records of the `mpu.progress` logger
(`progress(phase, done, total)`): the console never prints them, a progress display
(`mpu.pipeline.progress`) listens to them, in this process or from the workers.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import logging.handlers
from collections.abc import Iterator

PROGRESS = "mpu.progress"
FORMAT = "%(asctime)s %(levelname)s %(job_label)s%(name)s: %(message)s"
_JOB: contextvars.ContextVar[str] = contextvars.ContextVar("mpu_job", default="")
_NOISY = ("transformers", "datasets", "absl", "urllib3", "filelock", "huggingface_hub", "fsspec")


class _JobLabel(logging.Filter):
    """Adds `job` (the current job's name) and `job_label` ("[name] " or "") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "job", None):
            record.job = _JOB.get()
        record.job_label = f"[{record.job}] " if record.job else ""
        return True


class _NotProgress(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != PROGRESS


class _TqdmHandler(logging.StreamHandler):
    """Writes through `tqdm.write`, so a log line does not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # never let logging raise
            self.handleError(record)


def console_handler(level: int) -> logging.Handler:
    handler = _TqdmHandler()
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_JobLabel())
    handler.addFilter(_NotProgress())
    return handler


def quiet_libraries() -> None:
    """Libraries' info chatter and loading bars off: their warnings still show."""
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def install(level: int = logging.INFO) -> None:
    """Configure this process's console logging (idempotent)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _TqdmHandler | logging.handlers.QueueHandler):
            root.removeHandler(h)
    root.addHandler(console_handler(level))
    root.setLevel(min(level, logging.INFO))
    logging.getLogger(PROGRESS).setLevel(logging.INFO)
    quiet_libraries()


def forward_to(queue) -> None:
    """In a worker process: send every record (progress included) to the parent's queue."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.handlers.QueueHandler(queue)
    handler.addFilter(_JobLabel())
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    quiet_libraries()


class _ToRoot(logging.Handler):
    """Hands records at or above its level to the root handlers (the console)."""

    def emit(self, record: logging.LogRecord) -> None:
        for h in logging.getLogger().handlers:
            if record.levelno >= h.level:
                h.handle(record)


@contextlib.contextmanager
def console_warnings_only(name: str) -> Iterator[None]:
    """Inside the block, logger `name` shows only warnings on the console; its own handlers
    (e.g. a server's workdir log file) still receive everything."""
    logger = logging.getLogger(name)
    up = _ToRoot(logging.WARNING)
    propagate = logger.propagate
    logger.propagate = False
    logger.addHandler(up)
    try:
        yield
    finally:
        logger.removeHandler(up)
        logger.propagate = propagate


@contextlib.contextmanager
def job(name: str) -> Iterator[None]:
    """Label every record logged inside the block with `name`."""
    token = _JOB.set(name)
    try:
        yield
    finally:
        _JOB.reset(token)


def progress(phase: str, done: int | None = None, total: int | None = None) -> None:
    """Report what the current job is doing (shown by a progress display, never printed)."""
    logging.getLogger(PROGRESS).info(
        phase, extra={"progress": (phase, done, total), "job": _JOB.get()}
    )
