"""Progress written to a file or a pipe is plain lines, throttled; a terminal keeps tqdm's bar."""

from __future__ import annotations

import io

from tqdm import tqdm

import mpu.logs as logs


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_file_gets_at_most_one_line_per_interval_and_one_at_the_end(monkeypatch):
    clock = iter(range(0, 10_000, 1))  # every call to the clock advances one second
    monkeypatch.setattr("time.monotonic", lambda: float(next(clock)))
    out = io.StringIO()
    bar = logs.progress_bar(total=200, desc="steps", file=out, leave=False)
    for i in range(200):
        bar.update(1)
        bar.set_postfix_str(f"loss {i}", refresh=True)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    # ~2 clock reads per update over 200 updates at one line per PLAIN_EVERY_S (10 s)
    assert 2 <= len(lines) <= 200 * 2 // logs.PLAIN_EVERY_S + 2
    assert lines[-1].startswith("steps: 200/200 (100%)")
    assert all(line.startswith("steps: ") for line in lines)


def test_a_bar_that_never_moved_prints_nothing_and_a_terminal_keeps_tqdm():
    out = io.StringIO()
    logs.progress_bar(total=5, desc="idle", file=out, leave=False).close()
    assert out.getvalue() == ""
    bar = logs.progress_bar(total=5, desc="tty", file=_Terminal())
    assert type(bar).__name__ != "PlainBar" and isinstance(bar, tqdm)
    bar.close()
