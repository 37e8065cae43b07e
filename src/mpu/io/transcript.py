"""A tamper-evident transcript of a job (docs/audit-log.md).

- `commitment(path)`: SHA-256 over an artifact's tensors in canonical order (sorted names; for
  each: name, dtype, shape, raw bytes), so the same weights commit to the same digest however
  they are sharded or whatever file metadata they carry.
- `SigningKey`: an Ed25519 key (from `cryptography`) kept in a 0600 file, created from the OS's
  CSPRNG on first use.
- `Transcript`: JSON lines, each carrying its sequence number, the SHA-256 of the previous line
  and an Ed25519 signature over its canonical JSON; `check` re-verifies the chain and every
  signature and names the first bad line.
- `receipt` / `check_receipt`: what a client signs for each copy it received and each update it
  returned, so either party can show what was exchanged.

This proves who wrote what and that nothing was changed or reordered afterwards; it is not a
zero-knowledge proof: checking that an update was *computed* correctly needs the secret key
and the artifacts themselves (`mpu verify`).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mpu.errors import MPUError

GENESIS = "0" * 64
RECEIPT_KIND = "mpu-client-receipt"
RECEIPT_FIELDS = {"job_id": str, "round": int, "copy_id": str, "copy": str, "delta": str,
                  "client_public_key": str, "sig": str}  # fmt: skip


class TranscriptError(MPUError):
    """The transcript, a signature or an artifact does not check out."""


# ---------------------------------------------------------------- commitments
def combine(leaves: dict[str, tuple[Any, Any, str]]) -> str:
    """The commitment from its leaves {name: (dtype, shape, SHA-256 of the raw bytes)}: SHA-256
    over "name, dtype, shape, digest" lines in sorted name order. Leaves rather than one stream
    of bytes, so writers hash each tensor as they write it, in any order, on helper threads."""
    h = hashlib.sha256(b"mpu-commitment-1\0")
    for name in sorted(leaves):
        dtype, shape, digest = leaves[name]
        h.update(f"{name}\0{str(dtype).removeprefix('torch.')}\0{list(shape)}\0{digest}\n".encode())
    return h.hexdigest()


def tensor_leaf(t) -> tuple[Any, tuple, str]:
    """One commitment leaf of a tensor as it is stored: (dtype, shape, SHA-256 of its bytes)."""
    leaf = PartsLeaf(t.dtype, tuple(t.shape))
    leaf.update(t)
    return leaf.leaf()


class PartsLeaf:
    """`tensor_leaf` of a tensor that arrives in flat parts, in order (never whole in memory)."""

    def __init__(self, dtype, shape: tuple):
        self._dtype, self._shape, self._hash = dtype, tuple(shape), hashlib.sha256()

    def update(self, part) -> None:
        import torch

        part = part.contiguous()
        if part.numel():
            self._hash.update(part.reshape(-1).view(torch.uint8).numpy())

    def update_bytes(self, data) -> None:
        """The next raw bytes of the tensor (a reader's `on_bytes`)."""
        self._hash.update(data)

    def leaf(self) -> tuple[Any, tuple, str]:
        return self._dtype, self._shape, self._hash.hexdigest()


def commitment(path: str | Path) -> str:
    """The commitment of a model folder or a safetensors file, from its tensors as stored."""
    from mpu.io.checkpoint import Checkpoint
    from mpu.io.safetensors_stream import SafetensorsReader

    path = Path(path)
    if path.is_dir():
        ck = Checkpoint(path)
        names, read = ck.names(), ck.read
    else:
        reader = SafetensorsReader(path)
        names, read = list(reader.specs), reader.read
    return combine({name: tensor_leaf(read(name)) for name in names})


# ---------------------------------------------------------------- keys
class SigningKey:
    """An Ed25519 private key in a 0600 file; `public_hex` is what others pin."""

    def __init__(self, path: str | Path):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.path = Path(path)
        try:
            raw = bytes.fromhex(self.path.read_text().strip())
            self._key = Ed25519PrivateKey.from_private_bytes(raw)
        except (ValueError, TypeError):
            raise TranscriptError(f"{self.path}: not an Ed25519 key file") from None

    @classmethod
    def create(cls, path: str | Path) -> SigningKey:
        """A new key from the OS's CSPRNG, written atomically with mode 0600 (never replaced)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        path = Path(path)
        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(raw.hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if a key appeared meanwhile: never replace a key
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return cls(path)

    @classmethod
    def load_or_create(cls, path: str | Path) -> SigningKey:
        return cls(path) if Path(path).is_file() else cls.create(path)

    @property
    def public_hex(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return (
            self._key.public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            .hex()
        )

    def sign(self, data: bytes) -> str:
        return self._key.sign(data).hex()

    def __repr__(self) -> str:  # never print the key
        return f"SigningKey(public={self.public_hex[:16]}…)"


def signature_ok(public_hex: str, data: bytes, signature_hex: str) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_hex)).verify(
            bytes.fromhex(signature_hex), data
        )
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


def canonical(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- the log
class Transcript:
    """An append-only, hash-chained, signed JSON-lines file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def _lines(self) -> list[bytes]:
        if not self.path.is_file():
            return []
        data = self.path.read_bytes()
        return data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n")

    def append(self, key: SigningKey, event: str, **fields: Any) -> dict:
        """Sign and append one entry. An entry equal to the last one but for its time (a command
        repeated after a crash, which recomputes the same artifacts) is not written twice; a torn
        last line (a crash while writing it) is dropped first."""
        data = self.path.read_bytes() if self.path.is_file() else b""
        if data and not data.endswith(b"\n"):  # a crash mid-write: that line never counted
            data = data[: data.rfind(b"\n") + 1]
            with open(self.path, "r+b") as f:
                f.truncate(len(data))
        lines = data.split(b"\n")[:-1] if data else []
        body = {"event": event, **fields}
        if lines:
            last = json.loads(lines[-1])
            if {k: v for k, v in last.items() if k not in ("seq", "prev", "time", "sig")} == body:
                return last
        entry = {
            "seq": len(lines) + 1,
            "prev": hashlib.sha256(lines[-1]).hexdigest() if lines else GENESIS,
            "time": now(),
            **body,
        }
        entry["sig"] = key.sign(canonical(entry))
        line = canonical(entry) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(fd, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        return entry

    def check(self, public_hex: str | None = None) -> list[dict]:
        """Every entry, after checking numbering, chain and signatures; raises TranscriptError
        naming the first bad line. The key is the one pinned by the caller, else the one in the
        first (init) entry."""
        if not self.path.is_file():
            raise TranscriptError(f"{self.path}: no transcript (the job predates the audit log?)")
        lines = self._lines()
        if not lines:
            raise TranscriptError(f"{self.path}: the transcript is empty")
        if not self.path.read_bytes().endswith(b"\n"):
            raise TranscriptError(f"{self.path}: line {len(lines)}: truncated (no line end)")
        entries: list[dict] = []
        prev = GENESIS
        for n, raw in enumerate(lines, start=1):
            where = f"{self.path}: line {n}"
            try:
                entry = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise TranscriptError(f"{where}: not a JSON entry") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("sig"), str):
                raise TranscriptError(f"{where}: not a signed entry")
            if entry.get("seq") != n:
                raise TranscriptError(
                    f"{where}: sequence number {entry.get('seq')!r}, expected {n} "
                    "(lines removed, inserted or reordered)"
                )
            if entry.get("prev") != prev:
                raise TranscriptError(
                    f"{where}: does not chain to line {n - 1} (an earlier line was changed, "
                    "removed or reordered)"
                )
            if n == 1:
                if entry.get("event") != "init":
                    raise TranscriptError(f"{where}: the first entry must be the job's init")
                public_hex = public_hex or entry.get("public_key")
            body = {k: v for k, v in entry.items() if k != "sig"}
            if not signature_ok(str(public_hex), canonical(body), entry["sig"]):
                raise TranscriptError(
                    f"{where} ({entry.get('event')}): bad signature (the line was edited, or "
                    "signed by another key)"
                )
            entries.append(entry)
            prev = hashlib.sha256(raw).hexdigest()
        return entries

    def head(self) -> str:
        """SHA-256 of the last line: what a certificate or a counterparty pins."""
        lines = self._lines()
        return hashlib.sha256(lines[-1]).hexdigest() if lines else GENESIS


# ---------------------------------------------------------------- client receipts
def receipt(
    key: SigningKey, *, job_id: str, round_: int, copy_id: str, copy: str, delta: str
) -> dict:
    """The client's signed statement: 'I received the copy committing to `copy` and returned the
    update committing to `delta`'."""
    body = {
        "kind": RECEIPT_KIND,
        "job_id": job_id,
        "round": round_,
        "copy_id": copy_id,
        "copy": copy,
        "delta": delta,
        "time": now(),
        "client_public_key": key.public_hex,
    }
    return {**body, "sig": key.sign(canonical(body))}


def check_receipt(obj: Any, where: str) -> dict:
    """A receipt whose signature holds under the key it names (pin that key to trust it)."""
    if not isinstance(obj, dict) or obj.get("kind") != RECEIPT_KIND:
        raise TranscriptError(f"{where}: not an MPU client receipt")
    for name, kind in RECEIPT_FIELDS.items():
        value = obj.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise TranscriptError(f"{where}: field {name!r} must be {kind.__name__}, got "
                                  f"{type(value).__name__}")  # fmt: skip
    body = {k: v for k, v in obj.items() if k != "sig"}
    if not signature_ok(str(obj.get("client_public_key")), canonical(body), str(obj.get("sig"))):
        raise TranscriptError(f"{where}: bad signature (the receipt was edited)")
    return obj
