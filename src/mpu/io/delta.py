"""Tickets and update (delta) files: the only artefacts that cross from client back to server.

A published copy carries `mpu-ticket.json` (job id, round, opaque copy id, hashes of the
published weights, an HMAC tag from the server). A delta is one `.safetensors` file of fp32
tensors Δ' = P⁺ − P named like the copy's tensors, whose `__metadata__` holds the ticket, so
an update can never be applied to the wrong job, round or copy. Nothing secret is inside
either: the tag is an HMAC, the copy id is random.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mpu.errors import CheckpointError, UpdateRejectedError, printable
from mpu.io.checkpoint import TICKET_FILE, atomic_write_json, read_json
from mpu.io.safetensors_stream import SafetensorsReader

HEX = frozenset("0123456789abcdef")
TICKET_FORMAT = "mpu-ticket"
DELTA_FORMAT = "mpu-delta"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Ticket:
    """Binds a copy (and the delta computed from it) to one job, round and copy."""

    job_id: str
    round: int
    copy_id: str
    weights_sha256: dict[str, str]
    tag: str
    format: str = TICKET_FORMAT
    schema: int = SCHEMA_VERSION

    def signed_fields(self) -> list:
        """What the server's HMAC tag covers (canonical order)."""
        return [
            self.format,
            self.schema,
            self.job_id,
            self.round,
            self.copy_id,
            sorted(self.weights_sha256.items()),
        ]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_mapping(cls, obj: object, where: str) -> Ticket:
        """Parse a ticket strictly: a JSON object of exactly typed fields (an integer round is
        an int, not 1.9 or true), every id a short string of hex digits."""
        if not isinstance(obj, dict):
            raise UpdateRejectedError(
                f"{where}: a ticket must be a JSON object, not {type(obj).__name__}"
            )
        if obj.get("format") != TICKET_FORMAT:
            raise UpdateRejectedError(f"{where}: not an MPU ticket (format={obj.get('format')!r})")
        if obj.get("schema") != SCHEMA_VERSION:
            raise UpdateRejectedError(
                f"{where}: ticket schema {obj.get('schema')!r}, this MPU reads {SCHEMA_VERSION}"
            )
        missing = [
            k for k in ("job_id", "round", "copy_id", "weights_sha256", "tag") if k not in obj
        ]
        if missing:
            raise UpdateRejectedError(f"{where}: malformed ticket (no {missing[0]!r})")
        rnd = obj["round"]
        if type(rnd) is not int or rnd < 1:
            raise UpdateRejectedError(
                f"{where}: malformed ticket (round {printable(rnd)!r} is not a positive integer)"
            )
        for name in ("job_id", "copy_id", "tag"):
            value = obj[name]
            if not isinstance(value, str) or len(value) > 128 or not all(c in HEX for c in value):
                raise UpdateRejectedError(
                    f"{where}: malformed ticket ({name} {printable(value)!r} is not hex digits)"
                )
        hashes = obj["weights_sha256"]
        if (
            not isinstance(hashes, dict)
            or len(hashes) > 10_000
            or not all(
                isinstance(k, str)
                and isinstance(v, str)
                and len(v) == 64
                and all(c in HEX for c in v)
                for k, v in hashes.items()
            )
        ):
            raise UpdateRejectedError(
                f"{where}: malformed ticket (weights_sha256 must map file names to SHA-256 hex digests)"
            )
        return cls(obj["job_id"], rnd, obj["copy_id"], dict(hashes), obj["tag"])


def write_ticket(folder: str | Path, ticket: Ticket) -> None:
    atomic_write_json(Path(folder) / TICKET_FILE, asdict(ticket))


def read_ticket(folder: str | Path) -> Ticket:
    path = Path(folder) / TICKET_FILE
    if not path.is_file():
        raise UpdateRejectedError(
            f"{folder}: no {TICKET_FILE}: not a copy published by `mpu server publish`"
        )
    try:
        obj = read_json(path, "ticket", any_json=True)
    except CheckpointError as exc:
        raise UpdateRejectedError(str(exc)) from None
    return Ticket.from_mapping(obj, str(path))


class DeltaFile:
    """A validated delta file: its ticket is read and checked before its tensor index is parsed,
    and the index may hold at most `max_tensors` entries (the model's count), so a forged
    header costs nothing before it is refused."""

    def __init__(self, path: str | Path, *, max_tensors: int | None = None, check=None):
        self.path = Path(path)
        if self.path.is_dir():
            raise UpdateRejectedError(f"{self.path}: is a folder, not a delta file")
        try:
            self.reader = SafetensorsReader(self.path, max_entries=max_tensors, defer_index=True)
        except CheckpointError as exc:
            raise UpdateRejectedError(str(exc)) from None
        meta = self.reader.metadata
        if meta.get("format") != DELTA_FORMAT:
            raise UpdateRejectedError(
                f"{self.path}: not an MPU delta file (format={printable(meta.get('format'))!r})"
            )
        try:
            obj = json.loads(meta.get("ticket", ""))
        except (json.JSONDecodeError, RecursionError):
            raise UpdateRejectedError(
                f"{self.path}: delta metadata has no readable ticket"
            ) from None
        self.ticket = Ticket.from_mapping(obj, str(self.path))
        if check is not None:
            check(self)  # e.g. job, round, copy and HMAC: refuse before the index is parsed
        try:
            self.reader.parse_index()
        except CheckpointError as exc:
            raise UpdateRejectedError(str(exc)) from None

    @property
    def specs(self):
        return self.reader.specs

    def read(self, name: str, on_bytes=None):
        return self.reader.read(name, on_bytes)

    def read_flat(self, name: str, start: int, stop: int, on_bytes=None):
        return self.reader.read_flat(name, start, stop, on_bytes)


def delta_metadata(ticket: Ticket) -> dict[str, str]:
    return {"format": DELTA_FORMAT, "schema": str(SCHEMA_VERSION), "ticket": ticket.to_json()}
