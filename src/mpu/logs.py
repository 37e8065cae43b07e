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
    """Writes through `tqdm.write`, so a log line does not break a progress bar — to the
    stderr of the moment (one that was replaced and closed, e.g. by a capture, is not used)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            import sys

            from tqdm.auto import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # never let logging raise
            self.handleError(record)


PLAIN_EVERY_S = 10.0  # a progress line at most this often when stderr is a file or a pipe
PLAIN_FORMAT = "{desc}: {n_fmt}/{total_fmt} ({percentage:.0f}%) [{elapsed}<{remaining}{postfix}]"


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar on a terminal; written to a file or a pipe (CI, `nohup`, `> log 2>&1`), a
    plain line at most every PLAIN_EVERY_S seconds and one when it ends, instead of a
    carriage-return redraw per update that fills the log with frames."""
    import sys

    from tqdm.auto import tqdm

    stream = kwargs.get("file") or sys.stderr
    if kwargs.get("disable") or _is_terminal(stream):
        return tqdm(iterable, **kwargs)
    return _plain_bar_class()(iterable, **kwargs)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _plain_bar_class():
    from tqdm import tqdm as std_tqdm

    class PlainBar(std_tqdm):
        """tqdm that prints whole plain lines, throttled: none at the start, one at the end."""

        def __init__(self, *args, **kwargs):
            kwargs.setdefault("mininterval", PLAIN_EVERY_S)
            kwargs["bar_format"] = PLAIN_FORMAT
            self._last_line = float("-inf")
            self._ending = False
            super().__init__(*args, **kwargs)

        def display(self, msg=None, pos=None):
            import time

            now = time.monotonic()
            idle = not self.n and not getattr(self, "postfix", None)  # nothing to report yet
            if not self._ending and (idle or now - self._last_line < PLAIN_EVERY_S):
                return True
            self._last_line = now
            self.fp.write((msg or self.__str__()).strip() + "\n")
            self.fp.flush()
            return True

        def close(self):
            if self.disable:
                return
            self._ending = True
            if self.n or self.leave:
                self.display()
            self.disable = True
            self._decr_instances(self)

    return PlainBar


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
