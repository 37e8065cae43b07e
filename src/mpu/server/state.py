"""The server's workdir: the one secret state file (mode 0600), round models, and a lock.

Layout of a workdir W (mode 0700):
  W/state.json        secret: master key, α per round, copy id → k, σ per block (0600)
  W/rounds/r001/      θ_1 as a Hugging Face folder (copied at init), r002/ = θ_2 (fp32) …
  W/server.log        server-side log (never key, seeds or α)
  W/.lock             exclusive lock while a command changes the workdir
Every write is atomic (temp + rename); the state is written last, so a crash leaves the
previous round intact and the command can simply be run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mpu.errors import ConfigError
from mpu.io.checkpoint import atomic_write_json, read_json

STATE_FILE = "state.json"
STATE_SCHEMA = 2
READABLE_SCHEMAS = (1, 2)  # 1: before the layout cache and θ norms (filled in on first use)


def round_dir(workdir: Path, round_: int) -> Path:
    return workdir / "rounds" / f"r{round_:03d}"


@dataclass
class CopyRecord:
    copy_id: str
    k: int  # 0-based index into the round's α (secret)
    folder: str  # "copy-3": the public folder name (random order)
    weights_sha256: dict[str, str] = field(default_factory=dict)
    commitment: str = ""  # SHA-256 over its tensors (mpu.io.transcript), for the audit log


@dataclass
class ServerState:
    job_id: str
    key_hex: str
    round: int
    config: dict
    model_dir: str
    base_dir: str
    checkpoint_dtype: str
    alphas: dict[str, list[float]] = field(default_factory=dict)  # round -> α
    copies: dict[str, list[dict]] = field(default_factory=dict)  # round -> [CopyRecord]
    sigmas: dict[str, dict[str, float]] = field(default_factory=dict)  # round -> block/tensor -> σ
    history: list[dict] = field(default_factory=list)
    schema: int = STATE_SCHEMA
    layout: dict | None = None  # the model's classified layout (mpu.arch.Layout.to_json)
    theta_norms: dict[str, dict[str, float]] = field(default_factory=dict)  # round -> ‖θ_t‖
    commitments: dict[str, str] = field(default_factory=dict)  # round -> commitment of θ_r
    log_seq: int = 0  # the last audit-log entry this state knows was written

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.key_hex)

    def copy_records(self, round_: int) -> list[CopyRecord]:
        return [CopyRecord(**c) for c in self.copies.get(str(round_), [])]

    def __repr__(self) -> str:  # keep the key out of tracebacks and debug prints
        return f"ServerState(job_id={self.job_id!r}, round={self.round}, <secrets hidden>)"


def save_state(workdir: Path, state: ServerState) -> None:
    from dataclasses import asdict

    atomic_write_json(workdir / STATE_FILE, asdict(state), mode=0o600)


def load_state(workdir: Path) -> ServerState:
    path = workdir / STATE_FILE
    if not path.is_file():
        raise ConfigError(
            f"{workdir}: not an MPU server workdir (no {STATE_FILE}; run `mpu server init`)"
        )
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(
            f"{path}: secret state is readable by others (mode {mode:o}); chmod 600 it"
        )
    obj = read_json(path, "server state")
    if obj.get("schema") not in READABLE_SCHEMAS:
        raise ConfigError(
            f"{path}: state schema {obj.get('schema')!r}, this MPU reads {READABLE_SCHEMAS}"
        )
    obj["schema"] = STATE_SCHEMA
    try:
        return ServerState(**obj)
    except TypeError as exc:
        raise ConfigError(f"{path}: malformed server state ({exc})") from None


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[None]:
    """Exclusive lock on the workdir for the duration of one command (init included): the
    state is read inside it, so no command works from a state another one is replacing."""
    try:
        fd = os.open(workdir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        raise ConfigError(f"{workdir}: no such server workdir") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{workdir}: another mpu server command is running on this workdir"
            ) from None
        yield
    finally:
        os.close(fd)
