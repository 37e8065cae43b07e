"""Flower's SuperNode with short waits: what `mpu join` runs instead of `flower-supernode`.

Flower's SuperNode is pull-based: it asks the SuperLink for a message, and when there is none
it sleeps a fixed 3 s before asking again (Flower 1.42, `start_client_internal`, not
configurable); while its ClientApp works it checks for the reply every 0.5 s. Each round
therefore waits 0–3 s for its message to be noticed and 0–0.5 s for its reply, on top of the
transfer and the training. There is no event to wait on instead, so this runs Flower's own
`flower-supernode` entry point with those two waits shortened: an idle node pulls every
`MPU_SUPERNODE_POLL` seconds (default `IDLE_PULL`; `mpu join --poll`), and a finished reply is
noticed within `REPLY_CHECK`. Nothing else in Flower changes. Where the module no longer looks
as expected (another Flower version), the stock SuperNode runs and a warning says so.

Flower's SuperExec, which starts a ClientApp process for each message, has a documented
setting for its own poll (`FLWR_SUPEREXEC_TASK_POLL_INTERVAL`, default 1 s); `join` sets it.
"""

from __future__ import annotations

import logging
import os
import time
import types

from mpu.errors import ConfigError

log = logging.getLogger("mpu.federated")
POLL_ENV = "MPU_SUPERNODE_POLL"
IDLE_PULL = 0.2  # seconds between an idle SuperNode's pulls (Flower's own: 3)
REPLY_CHECK = 0.05  # seconds between checks for the ClientApp's reply (Flower's own: 0.5)
FLOWER_IDLE_SLEEP = 3  # the one sleep of Flower's loop that is the idle pull


class ShortWaits:
    """Stands in for the `time` module inside Flower's SuperNode loop: the idle pull sleeps
    `idle` seconds, every other wait at most `REPLY_CHECK`; all else is `time` itself."""

    def __init__(self, idle: float) -> None:
        self.idle = idle

    def sleep(self, seconds: float) -> None:
        time.sleep(self.idle if seconds == FLOWER_IDLE_SLEEP else min(seconds, REPLY_CHECK))

    def __getattr__(self, name: str):
        return getattr(time, name)


def shorten_waits(idle: float) -> bool:
    """Install `ShortWaits` in Flower's SuperNode loop; False (and nothing changed) where that
    loop is not the one this was written against."""
    import flwr.supernode.start_client_internal as loop

    if not isinstance(getattr(loop, "time", None), types.ModuleType) or not hasattr(
        loop, "start_client_internal"
    ):
        return False
    loop.time = ShortWaits(idle)
    return True


def check_poll(seconds: float, where: str) -> float:
    """`seconds` if an idle pull interval can work (0.01 to 60 s), else ConfigError."""
    if not 0.01 <= seconds <= 60:
        raise ConfigError(f"{where}={seconds!r}: give seconds between 0.01 and 60")
    return seconds


def poll_interval() -> float:
    """The idle pull interval from `MPU_SUPERNODE_POLL` (seconds), else `IDLE_PULL`."""
    raw = os.environ.get(POLL_ENV, "")
    try:
        return check_poll(float(raw) if raw else IDLE_PULL, POLL_ENV)
    except (ValueError, ConfigError) as exc:
        raise SystemExit(f"{POLL_ENV}={raw!r}: give seconds between 0.01 and 60") from exc


def main() -> None:
    """`python -m mpu.federated.supernode ARGS`: `flower-supernode ARGS` with short waits."""
    from flwr.supernode.cli import flower_supernode

    idle = poll_interval()
    if not shorten_waits(idle):
        logging.basicConfig(level=logging.WARNING)
        log.warning("this Flower's SuperNode loop is not the one mpu knows (Flower 1.42): "
                    "running it unchanged, with its 3 s idle pull")  # fmt: skip
    flower_supernode()


if __name__ == "__main__":
    main()
