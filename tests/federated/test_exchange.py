"""The server's message exchange: replies are read soon after they arrive, a missing one ends
the wait at the timeout, and the pause between pulls backs off instead of Flower's fixed 3 s."""

from __future__ import annotations

import time
from types import SimpleNamespace

from mpu.federated import server_app
from mpu.federated.server_app import exchange


class _SlowGrid:
    """Replies to message i become pullable `delays[i]` seconds after the push (None: never)."""

    def __init__(self, delays):
        self.delays, self.pulls = delays, 0

    def push_messages(self, messages):
        self.t0 = time.monotonic()
        return [f"m{i}" for i in range(len(messages))]

    def pull_messages(self, ids):
        self.pulls += 1
        now = time.monotonic() - self.t0
        ready = [i for i in ids if (d := self.delays[int(i[1:])]) is not None and now >= d]
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready]


def test_replies_are_read_soon_after_they_arrive():
    grid = _SlowGrid([0.0, 0.3])
    t0 = time.monotonic()
    replies = exchange(grid, [object(), object()], timeout=10)
    waited = time.monotonic() - t0
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1"]
    # the pauses 0.05, 0.1, 0.2 reach 0.35 s (slack for a loaded machine); Flower's loop
    # would have slept 3 s
    assert 0.3 <= waited < 1.5
    assert grid.pulls <= 6


def test_a_missing_reply_ends_the_wait_at_the_timeout():
    grid = _SlowGrid([0.0, None])
    t0 = time.monotonic()
    replies = exchange(grid, [object(), object()], timeout=0.4)
    assert [r.metadata.reply_to_message_id for r in replies] == ["m0"]
    assert 0.4 <= time.monotonic() - t0 < 0.4 + server_app.POLL_MAX
