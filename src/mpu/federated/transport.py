"""Folders in Flower messages, byte for byte: the copies out, the deltas back.

A published copy or a returned delta is a folder of small files (config, tokenizer, ticket)
and safetensors files. It travels as a Flower `RecordDict` of three records:

  "manifest"  ConfigRecord  {"folders": JSON [{name, files: {file: entry}}]}
  "blobs"     ConfigRecord  sha256 → bytes of a small file or of a safetensors header
  "tensors"   ArrayRecord   t<n> → the raw bytes of one tensor (one Flower `Array`)

A tensor equal to the same-named tensor of an earlier folder (embeddings, norms: what the
protocol leaves unperturbed is the same in all m copies) is listed again, not sent again, and
small files are addressed by their SHA-256 (one tokenizer for all copies). Equality is
checked byte for byte, so finding the shared tensors costs a comparison, not a hash. Every
tensor is its own `Array`, which Flower streams in chunks (5 MiB by default), so no message
holds a whole model in one buffer. The receiver writes each file
from its header and tensors in offset order and checks the result against the sender's
SHA-256 of the file: what arrives is the file that left, or an `UpdateRejectedError` names the
fault. Nothing here depends on the file being a model: the server's checks (tickets, shapes,
NaN/Inf, the HMAC tag) run on the rebuilt files exactly as on files handed over by hand.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from mpu.errors import UpdateRejectedError
from mpu.io.atomic import atomic_write_bytes

CHUNK = 4 * 2**20  # bytes per read of a direct stream
RAW_STYPE = "mpu.raw-bytes"  # an Array whose data are a tensor's bytes as stored on disk
MAX_HEADER_BYTES = 100 * 2**20  # the safetensors format's own limit


@dataclass(frozen=True)
class Packed:
    """A RecordDict's parts before they become Flower records (and their byte counts)."""

    manifest: list[dict]
    blobs: dict[str, bytes]
    tensors: dict[str, bytes]

    @property
    def payload_bytes(self) -> int:
        return sum(map(len, self.blobs.values())) + sum(map(len, self.tensors.values()))

    def without_tensors(self) -> Packed:
        """The manifest and small files only (the tensors go by the direct path)."""
        return Packed(self.manifest, self.blobs, {})

    def with_tensors(self, tensors: dict) -> Packed:
        return Packed(self.manifest, self.blobs, dict(tensors))

    @property
    def listed_bytes(self) -> int:
        """What the folders weigh on disk: the payload without content addressing."""
        return sum(e["size"] for f in self.manifest for e in f["files"].values())


def _digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_header(raw: bytes | mmap.mmap, where: str) -> tuple[int, dict]:
    if len(raw) < 8:
        raise UpdateRejectedError(f"{where}: truncated safetensors file (no header length)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(raw):
        raise UpdateRejectedError(f"{where}: safetensors header length {n} is impossible")
    try:
        header = json.loads(bytes(raw[8 : 8 + n]))
    except ValueError:
        raise UpdateRejectedError(f"{where}: safetensors header is not JSON") from None
    return n, header


def _tensor_spans(header: dict, where: str) -> list[tuple[str, int, int]]:
    """(name, begin, end) in data order; the spans must tile the data region with no gap."""
    spans = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise UpdateRejectedError(
                f"{where}: tensor {name!r} has no valid data_offsets"
            ) from None
        spans.append((name, begin, end))
    spans.sort(key=lambda s: s[1])
    at = 0
    for name, begin, end in spans:
        if begin != at or end < begin:
            raise UpdateRejectedError(f"{where}: tensor {name!r} does not follow the previous one")
        at = end
    return spans


def pack_folders(
    folders: list[Path],
    names: list[str] | None = None,
    *,
    only: tuple[str, ...] | None = None,
    known_sha256: dict[Path, str] | None = None,
    views: bool = False,
) -> Packed:
    """Every file (not subfolder) of every folder (see the module docstring); `names` renames
    the folders for the receiver (default: their own names), `only` keeps just the files of
    those names. `known_sha256`: the SHA-256 of files the caller already hashed (a published
    copy's ticket holds its weights' hash), which is then not computed again; the receiver
    checks every file against it all the same. `views`: tensors are read-only views of the
    files' memory maps, not copies (the direct path streams them from the page cache); the
    files must not change while the result is in use."""
    manifest, blobs, tensors = [], {}, {}
    seen: dict[tuple[str, str], tuple[str, bytes | memoryview]] = {}  # (file, tensor) → key, bytes
    names = names or [Path(f).name for f in folders]
    for folder, folder_name in zip(folders, names, strict=True):
        files = {}
        paths = sorted(p for p in Path(folder).iterdir() if p.is_file())
        for path in (p for p in paths if only is None or p.name in only):
            if path.suffix != ".safetensors":
                data = path.read_bytes()
                key = _digest(data)
                blobs[key] = data
                files[path.name] = {"blob": key, "sha256": key, "size": len(data)}
                continue
            with path.open("rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            known = (known_sha256 or {}).get(Path(path))
            files[path.name] = _pack_weights(path, mm, blobs, tensors, seen, known, views)
            if not views:
                mm.close()
        manifest.append({"name": folder_name, "files": files})
    return Packed(manifest, blobs, tensors)


def _pack_weights(path: Path, mm: mmap.mmap, blobs: dict, tensors: dict, seen: dict,
                  known: str | None, views: bool) -> dict:  # fmt: skip
    """One safetensors file's manifest entry; its header into `blobs`, its tensors into
    `tensors` — a tensor equal to the same-named tensor of an earlier folder's file of the same
    name (the weights the protocol leaves unperturbed) is listed again, not sent again."""
    n, header = _read_header(mm, str(path))
    head = bytes(mm[: 8 + n])
    blobs[_digest(head)] = head
    whole = memoryview(mm)
    keys = []
    for name, begin, end in _tensor_spans(header, str(path)):
        raw = whole[8 + n + begin : 8 + n + end]
        raw = raw if views else bytes(raw)
        key, earlier = seen.get((path.name, name), (None, None))
        if earlier is None or not _same_bytes(earlier, raw):
            key = f"t{len(tensors)}"
            tensors[key] = raw
            seen[(path.name, name)] = (key, raw)
        keys.append(key)
    digest = known or hashlib.sha256(whole).hexdigest()
    del whole
    return {"header": _digest(head), "tensors": keys, "sha256": digest, "size": len(mm)}


def _same_bytes(a: bytes | memoryview, b: bytes | memoryview, chunk: int = 4 * 2**20) -> bool:
    """a == b by memcmp, a chunk at a time (memoryview's own == compares element by element,
    about 3 s a gigabyte here); stops at the first chunk that differs."""
    if len(a) != len(b):
        return False
    if isinstance(a, bytes) and isinstance(b, bytes):
        return a == b  # already one memcmp, no slices to copy
    return all(bytes(a[i : i + chunk]) == bytes(b[i : i + chunk]) for i in range(0, len(a), chunk))


def to_records(packed: Packed):
    """The three Flower records of a `Packed` (imports flwr only when a message is made)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord

    arrays = ArrayRecord(
        {
            k: Array(dtype="uint8", shape=(len(v),), stype=RAW_STYPE, data=bytes(v))
            for k, v in packed.tensors.items()
        }
    )
    return {
        "manifest": ConfigRecord({"folders": json.dumps(packed.manifest)}),
        "blobs": ConfigRecord(dict(packed.blobs)),
        "tensors": arrays,
    }


def from_records(content, where: str) -> Packed:
    """A `Packed` back from a received RecordDict; a missing or ill-typed part is refused."""
    try:
        manifest = json.loads(content["manifest"]["folders"])
        blobs = {k: bytes(v) for k, v in content["blobs"].items()}
        tensors = {}
        for k, arr in content["tensors"].items():
            if arr.stype != RAW_STYPE:
                raise UpdateRejectedError(f"{where}: tensor {k[:12]}… is not raw bytes")
            tensors[k] = arr.data
    except UpdateRejectedError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise UpdateRejectedError(f"{where}: malformed message ({exc!r})") from None
    if not isinstance(manifest, list):
        raise UpdateRejectedError(f"{where}: malformed manifest")
    return Packed(manifest, blobs, tensors)


def declared_bytes(packed: Packed, where: str) -> int:
    """What the folders would weigh once written; checked against a limit before any write.
    The manifest's shape is checked here too, once, so that what reads it after (the writer,
    a stream's bookkeeping) meets only strings where it looks up keys."""
    try:
        entries = [e for f in packed.manifest for e in f["files"].values()]
        total = sum(int(e["size"]) for e in entries)
        ok = all(isinstance(e["blob"], str) if "blob" in e else isinstance(e["header"], str)
                 and all(isinstance(k, str) for k in e["tensors"]) for e in entries)  # fmt: skip
    except (AttributeError, KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise UpdateRejectedError(f"{where}: malformed manifest")
    return total


def _safe_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name:
        raise UpdateRejectedError(f"{where}: refused file or folder name {name!r}")
    return name


def write_folders(packed: Packed, out_dir: Path, where: str, *, max_bytes: int | None = None,
                  stream=None) -> list[Path]:  # fmt: skip
    """Write the folders under `out_dir`; returns their paths in manifest order.

    `max_bytes` bounds the declared size before anything is written (a delta larger than the
    model it belongs to is refused here). Each file is hashed as it is written and kept only if
    its SHA-256 is the one sent; on a mismatch the message is refused and the file is not left
    behind. `stream` (anything with `readinto`): the tensors are not in `packed` but arrive on
    it, each once, in the order the manifest first names them (the direct path, direct.py);
    the file's header says how long each is."""
    total = declared_bytes(packed, where)
    if max_bytes is not None and total > max_bytes:
        raise UpdateRejectedError(
            f"{where}: {total} bytes declared, more than the {max_bytes} bytes of the model "
            "it belongs to; refused before writing"
        )
    parts = _Parts(packed, stream)
    written = []
    for folder in packed.manifest:
        name = _safe_name(folder.get("name"), where)
        dest = out_dir / name
        dest.mkdir(parents=True, exist_ok=True)
        for fname, entry in sorted(folder.get("files", {}).items()):
            label = f"{where}: {name}/{_safe_name(fname, where)}"
            chunks = _hashed(parts.of(entry, label), entry.get("sha256"), label)
            atomic_write_bytes(dest / fname, chunks)
        written.append(dest)
    return written


def _hashed(chunks, expected: object, label: str):
    """`chunks`, passed on while hashed; ends by refusing them if the SHA-256 is not
    `expected` (so `atomic_write_bytes` removes the file instead of renaming it)."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != expected:
        raise UpdateRejectedError(f"{label}: content differs from what was sent (SHA-256)")


class _Parts:
    """Where each file's bytes come from: the message's own tensors, or the direct stream
    (a tensor named again later is kept in memory for its next file)."""

    def __init__(self, packed: Packed, stream=None):
        self.packed, self.stream = packed, stream
        self.uses: dict[str, int] = {}
        for f in packed.manifest if stream is not None else ():
            for e in f.get("files", {}).values():
                for k in e.get("tensors", ()) if isinstance(e, dict) else ():
                    self.uses[k] = self.uses.get(k, 0) + 1
        self.kept: dict[str, bytes] = {}
        self.buffer = memoryview(bytearray(CHUNK if stream is not None else 0))

    def of(self, entry: dict, label: str):
        """The file's chunks in order (checked against its header), lazily."""
        try:
            if "blob" in entry:
                return iter([self.packed.blobs[entry["blob"]]])
            head = self.packed.blobs[entry["header"]]
            keys = list(entry["tensors"])
        except (KeyError, TypeError):
            raise UpdateRejectedError(f"{label}: a part is missing") from None
        _, header = _read_header(head, label)
        sizes = [e - b for _, b, e in _tensor_spans(header, label)]
        if len(sizes) != len(keys):
            raise UpdateRejectedError(f"{label}: tensors do not match the file's header")
        return self._chunks(head, keys, sizes, label)

    def _chunks(self, head: bytes, keys: list, sizes: list[int], label: str):
        yield head
        for key, size in zip(keys, sizes, strict=True):
            if self.stream is None or key in self.kept:
                got = self.packed.tensors.get(key) if self.stream is None else self.kept[key]
                if got is None:
                    raise UpdateRejectedError(f"{label}: a part is missing")
                if len(got) != size:
                    raise UpdateRejectedError(f"{label}: tensors do not match the file's header")
                yield got
                continue
            yield from self._read(key, size, label)

    def _read(self, key: str, size: int, label: str):
        self.uses[key] -= 1
        keep = bytearray() if self.uses[key] > 0 else None
        left = size
        while left:
            n = self.stream.readinto(self.buffer[: min(CHUNK, left)])
            if not n:
                raise UpdateRejectedError(f"{label}: the direct stream ended early")
            left -= n
            if keep is not None:
                keep += self.buffer[:n]
            yield self.buffer[:n]  # written before the next read reuses the buffer
        if keep is not None:
            self.kept[key] = bytes(keep)


def stream_order(packed: Packed) -> list[str]:
    """The tensors in the order `write_folders(stream=…)` reads them: as the manifest first
    names them (folders in order, files by name). What a sender must send, each once."""
    order: dict[str, None] = {}
    for folder in packed.manifest:
        for _, entry in sorted(folder["files"].items()):
            order.update(dict.fromkeys(entry.get("tensors", ())))
    return list(order)
