"""The one owner of the round loop: R rounds of publish → client → aggregate.

Like a Flower strategy's `start()`: `run_rounds` drives a `Server` through its rounds and asks
a client callable for the round's deltas; the experiment (`mpu run`), the examples and the
federated deployment all call it rather than writing the loop again. It resumes: a job whose
process died mid-round is reopened from its workdir (same secret key), the interrupted round is
published again (byte-identical, the copies are regenerated from the key) and the loop
continues, so a rerun ends with the same θ as an uninterrupted run.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mpu.io.checkpoint import clean_debris
from mpu.server.job import Server


@dataclass(frozen=True)
class RoundContext:
    """What a client is handed for one round."""

    round: int  # the server's round number, 1-based
    copies: list[Path]  # this round's published copy folders, in folder-name order
    first_copies: list[Path]  # round 1's copies, same order (reference policy first_round_copy)
    workdir: Path  # where the client may write this round's outputs


ClientFn = Callable[[RoundContext], list[Path]]


def outbox_of(workdir: Path, round_: int) -> Path:
    return Path(workdir) / f"round{round_}" / "outbox"


def run_rounds(
    server: Server,
    last_round: int,
    client: ClientFn,
    workdir: str | Path,
    *,
    progress: bool = False,
    on_round: Callable[[int, dict], None] | None = None,
) -> Server:
    """Run rounds until the server has aggregated round `last_round`; returns the server.

    `client(ctx)` returns one delta file per copy of `ctx.copies` (any order). `on_round(r,
    stats)` is called after each aggregation.
    """
    workdir = Path(workdir)
    while server.round <= last_round:
        r = server.round
        outbox = outbox_of(workdir, r)
        if outbox.exists():  # an interrupted round: the same copies are published again
            shutil.rmtree(outbox)
        clean_debris(outbox.parent)
        copies = server.publish(outbox, progress=progress)
        first = copies if r == 1 else sorted(outbox_of(workdir, 1).iterdir())
        first = [p for p in first if not p.name.startswith(".")]
        deltas = client(RoundContext(r, copies, first, outbox.parent))
        stats = server.aggregate(deltas, progress=progress)
        if on_round is not None:
            on_round(r, stats)
    return server
