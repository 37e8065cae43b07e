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

from mpu.errors import CheckpointError, UpdateRejectedError
from mpu.io.checkpoint import TICKET_FILE, atomic_write_json, read_json
from mpu.io.safetensors_stream import SafetensorsReader

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
    def from_mapping(cls, obj: dict, where: str) -> Ticket:
        if obj.get("format") != TICKET_FORMAT:
            raise UpdateRejectedError(f"{where}: not an MPU ticket (format={obj.get('format')!r})")
        if obj.get("schema") != SCHEMA_VERSION:
            raise UpdateRejectedError(
                f"{where}: ticket schema {obj.get('schema')!r}, this MPU reads {SCHEMA_VERSION}"
            )
        try:
            return cls(
                job_id=str(obj["job_id"]),
                round=int(obj["round"]),
                copy_id=str(obj["copy_id"]),
                weights_sha256={str(k): str(v) for k, v in dict(obj["weights_sha256"]).items()},
                tag=str(obj["tag"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UpdateRejectedError(f"{where}: malformed ticket ({exc!r})") from None


def write_ticket(folder: str | Path, ticket: Ticket) -> None:
    atomic_write_json(Path(folder) / TICKET_FILE, asdict(ticket))


def read_ticket(folder: str | Path) -> Ticket:
    path = Path(folder) / TICKET_FILE
    if not path.is_file():
        raise UpdateRejectedError(
            f"{folder}: no {TICKET_FILE}: not a copy published by `mpu server publish`"
        )
    try:
        obj = read_json(path, "ticket")
    except CheckpointError as exc:
        raise UpdateRejectedError(str(exc)) from None
    return Ticket.from_mapping(obj, str(path))


class DeltaFile:
    """A validated delta file: structure (header, sizes) and metadata checked on open."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.reader = SafetensorsReader(self.path)
        except CheckpointError as exc:
            raise UpdateRejectedError(str(exc)) from None
        meta = self.reader.metadata
        if meta.get("format") != DELTA_FORMAT:
            raise UpdateRejectedError(
                f"{self.path}: not an MPU delta file (format={meta.get('format')!r})"
            )
        try:
            self.ticket = Ticket.from_mapping(json.loads(meta.get("ticket", "")), str(self.path))
        except json.JSONDecodeError:
            raise UpdateRejectedError(
                f"{self.path}: delta metadata has no readable ticket"
            ) from None

    @property
    def specs(self):
        return self.reader.specs

    def read(self, name: str):
        return self.reader.read(name)


def delta_metadata(ticket: Ticket) -> dict[str, str]:
    return {"format": DELTA_FORMAT, "schema": str(SCHEMA_VERSION), "ticket": ticket.to_json()}
