"""The data owner's warm worker: one process that `mpu join` keeps for the whole request, so
that a round costs its transfer and its training, not Python's start-up.

Flower (1.42) starts a fresh ClientApp process for every message and ends it after one task.
A round trained there first pays for importing torch and transformers and for reading the
client's data and settings: about 3 s on the tiny model, where the training itself takes half a
second. `mpu join` therefore starts this worker beside the SuperNode. It imports all of that and
loads the data once, then listens on a Unix socket for "unlearn these copies of round r" and
answers with the folders that hold the deltas and receipts. The ClientApp, which then imports
neither torch nor transformers, writes the copies it received, asks the worker and packs the
reply. Without a worker (a simulation, or a worker that has died) the ClientApp trains in its
own process as before; the results are the same bytes either way (`unlearn_round`).

The socket lies in a private folder (mode 0700) with a key file (0600) beside it, and every
connection passes `multiprocessing.connection`'s HMAC challenge with that key: only the client's
own user can hand the worker work. Requests and replies are JSON, never pickles.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import secrets
import shutil
import signal
import socket as pysocket
import sys
import tempfile
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Listener
from pathlib import Path

from mpu.errors import MPUError
from mpu.io.atomic import atomic_write_bytes

log = logging.getLogger("mpu.federated")
SOCKET = "worker.sock"
KEY = "worker.key"
SOCKET_PATH_MAX = 100  # bytes; the kernel allows 107
SETTINGS = "side.toml"  # written by `mpu join` before it starts the worker
START_WAIT = 120.0  # seconds a round waits for a worker that is still loading


def worker_folder(workdir: Path | None = None) -> Path:
    """A fresh private folder (0700) for a worker's socket and key: `workdir/worker` (what an
    earlier, killed worker left there is replaced), or a new folder under the system's temp
    folder where that path would be too long for a Unix socket (108 bytes)."""
    if workdir is not None and len(str((workdir / "worker" / SOCKET).resolve())) < SOCKET_PATH_MAX:
        folder = workdir / "worker"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(mode=0o700)
        return folder
    return Path(tempfile.mkdtemp(prefix="mpu-worker-"))  # mkdtemp makes it 0700


def ask_worker(socket: Path, round_: int, first_round: int, copies: list[Path]) -> list[Path]:
    """The worker's answer for one round: one output folder per copy. A worker still loading
    (its folder has its settings, not yet its socket) is waited for, up to START_WAIT seconds.
    OSError when no worker listens (the caller trains itself); MPUError when the worker's
    training failed."""
    deadline = time.monotonic() + START_WAIT
    while not socket.exists() and (socket.parent / SETTINGS).is_file():
        if time.monotonic() > deadline:
            raise FileNotFoundError(f"{socket}: the worker did not start in {START_WAIT:.0f} s")
        time.sleep(0.05)
    key = (socket.parent / KEY).read_bytes()
    with Client(str(socket), family="AF_UNIX", authkey=key) as conn:
        request = {"round": round_, "first_round": first_round, "copies": [str(c) for c in copies]}
        conn.send_bytes(json.dumps(request).encode())
        reply = json.loads(conn.recv_bytes())
    if "error" in reply:
        raise MPUError(f"the client's worker could not unlearn round {round_}: {reply['error']}")
    return [Path(p) for p in reply["outs"]]


class Worker:
    """The loaded client: its settings, its data, and every heavy import, kept warm."""

    stopped = False
    listener: Listener | None = None  # set by serve

    def __init__(self, side) -> None:
        from mpu.client.unlearn import unlearn_copy  # noqa: F401  (the heavy imports, now)
        from mpu.federated.client_app import load_side

        self.side = side
        self.loaded = load_side(side)

    def answer(self, request: dict) -> dict:
        """One request → {"outs": [...]} or {"error": "..."}; an error never ends the worker."""
        from mpu.federated.client_app import unlearn_round

        started = time.monotonic()
        try:
            cfg, data = self.loaded
            outs = unlearn_round(self.side, int(request["round"]), int(request["first_round"]),
                                 [Path(c) for c in request["copies"]],
                                 loaded=(cfg, copy.deepcopy(data)))  # fmt: skip
        except Exception as exc:  # reported to the ClientApp, which fails the round with it
            log.exception("round %s failed", request.get("round"))
            return {"error": f"{type(exc).__name__}: {exc}"}
        log.info("round %s: %d copies unlearned in %.1f s", request["round"], len(outs),
                 time.monotonic() - started)  # fmt: skip
        return {"outs": [str(o) for o in outs]}

    def serve(self, folder: Path) -> None:
        """Listen in `folder` until `stop` (or a signal); one request at a time (one message
        per round)."""
        key = secrets.token_bytes(32)
        atomic_write_bytes(folder / KEY, key, mode=0o600)
        self.listener = Listener(str(folder / SOCKET), family="AF_UNIX", authkey=key)
        log.info("the client's worker is ready (%s)", folder / SOCKET)
        with self.listener:
            while not self.stopped:
                try:
                    conn = self.listener.accept()
                except (OSError, EOFError, AuthenticationError) as exc:  # not our user's app
                    if not self.stopped:
                        log.warning("refused a connection to the worker: %s", exc)
                    continue
                with conn:
                    try:
                        request = json.loads(conn.recv_bytes())
                        conn.send_bytes(json.dumps(self.answer(request)).encode())
                    except (OSError, EOFError, ValueError) as exc:  # the asker went away
                        log.warning("dropped a request to the worker: %s", exc)

    def stop(self) -> None:
        """End `serve` (from another thread); serve removes its socket as it returns. Closing a
        listening socket does not wake a thread blocked in accept() on Linux, so knock once:
        the knock fails the key check, and serve sees `stopped` and returns."""
        self.stopped = True
        if self.listener is None:  # not listening yet: serve will see `stopped` and not loop
            return
        with contextlib.suppress(OSError), pysocket.socket(pysocket.AF_UNIX) as knock:
            knock.settimeout(1.0)
            knock.connect(self.listener.address)


def main(argv: list[str] | None = None) -> None:
    """`python -m mpu.federated.worker --node-config FILE --folder DIR` (started by join)."""
    import tomllib

    from mpu.federated.client_app import ClientSide

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--node-config", required=True, type=Path)
    p.add_argument("--folder", required=True, type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    side = ClientSide.from_mapping(tomllib.loads(args.node_config.read_text()))
    os.chmod(args.folder, 0o700)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stopped by join: clean up below
    try:
        Worker(side).serve(args.folder)
    finally:
        shutil.rmtree(args.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
