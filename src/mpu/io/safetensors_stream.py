"""Streaming, validating safetensors reader and writer.

Why not only the `safetensors` package: its reader memory-maps the file (every page touched
then counts in the process RSS until evicted) and its writer needs the whole state dict in
memory. Publishing m copies and aggregating m updates must stay within one tensor plus an
accumulator (issue 3), so we read one tensor with plain `readinto` and write one tensor at a
time into a file whose header is known up front. The format is the public safetensors spec
(8-byte little-endian header length, JSON header, raw little-endian data); tests cross-check
every file against `safetensors.safe_open`.

Every structural fault (truncation, bad header, overlapping or out-of-range offsets, unknown
dtype, size/shape mismatch) raises `CheckpointError` naming the file and the fault.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from mpu.errors import CheckpointError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER_BYTES = 100 * 1024 * 1024
WRITEBACK_BYTES = 32 * 1024 * 1024  # start the disk writeback every this many bytes


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one stored tensor (what a header promises)."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize


def _integer(x: object) -> int:
    """A JSON integer, strictly: 1.9 and true are not sizes."""
    if type(x) is not int:
        raise ValueError(f"{x!r} is not an integer")
    return x


class SafetensorsReader:
    """Validated random access to the tensors of one `.safetensors` file, one at a time."""

    def __init__(
        self, path: str | Path, *, max_entries: int | None = None, defer_index: bool = False
    ):
        """Open and validate a file. `max_entries` caps the tensor count (and so the header's
        size, checked before it is parsed); `defer_index` parses only `__metadata__` until
        `parse_index()` is called (check a file's claims before paying for its index)."""
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        if self.path.is_dir():
            raise CheckpointError(f"{self.path}: is a folder, not a safetensors file")
        if size < 8:
            raise CheckpointError(f"{self.path}: truncated ({size} bytes, no header length)")
        limit = MAX_HEADER_BYTES
        if max_entries is not None:
            limit = min(limit, (1 << 20) + 1024 * max_entries)
        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                raise CheckpointError(
                    f"{self.path}: corrupt or truncated header (claims {header_len} bytes, file has {size})"
                )
            if header_len > limit:
                raise CheckpointError(
                    f"{self.path}: header of {header_len} bytes is larger than {limit} (the most "
                    f"{max_entries or 'any'} tensors can need): refused unread"
                )
            raw = f.read(header_len)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{self.path}: header is not valid JSON ({exc})") from None
        except RecursionError:
            raise CheckpointError(f"{self.path}: header is nested too deeply") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise CheckpointError(f"{self.path}: __metadata__ must map strings to strings")
        if max_entries is not None and len(header) > max_entries:
            raise CheckpointError(
                f"{self.path}: {len(header)} tensors, more than the model's {max_entries}"
            )
        self.metadata: dict[str, str] = meta
        self._data_start = 8 + header_len
        self._data_len = size - self._data_start
        self._header = header
        self.specs: dict[str, TensorSpec] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        if not defer_index:
            self.parse_index()

    def parse_index(self) -> None:
        """Validate every tensor entry: dtype, shape, offsets inside the data, no overlap, no gap."""
        header, data_len = self._header, self._data_len
        spans = []
        for name, entry in header.items():
            spec, (start, end) = self._parse_entry(name, entry)
            if not 0 <= start <= end <= data_len:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} lies outside the data (offsets {start}..{end}, "
                    f"data has {data_len} bytes): file truncated or corrupt"
                )
            if end - start != spec.nbytes:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} has {end - start} bytes, its dtype/shape need {spec.nbytes}"
                )
            self.specs[name] = spec
            self._offsets[name] = (start, end)
            spans.append((start, end, name))
        spans.sort()
        for (_, e1, n1), (s2, _, n2) in itertools.pairwise(spans):
            if s2 < e1:
                raise CheckpointError(f"{self.path}: tensors {n1!r} and {n2!r} overlap")
        covered = spans[-1][1] if spans else 0
        if covered != data_len:
            raise CheckpointError(
                f"{self.path}: data section has {data_len} bytes but tensors cover {covered}: "
                "file truncated or has trailing garbage"
            )
        self._header = {}

    def _parse_entry(self, name: str, entry: object) -> tuple[TensorSpec, tuple[int, int]]:
        try:
            dtype = DTYPES[entry["dtype"]]  # type: ignore[index]
            shape = tuple(_integer(s) for s in entry["shape"])  # type: ignore[index]
            start, end = (_integer(x) for x in entry["data_offsets"])  # type: ignore[index]
        except KeyError as exc:
            raise CheckpointError(
                f"{self.path}: tensor {name!r}: missing or unknown field {exc}"
            ) from None
        except (TypeError, ValueError):
            raise CheckpointError(f"{self.path}: tensor {name!r}: malformed header entry") from None
        if any(s < 0 for s in shape):
            raise CheckpointError(f"{self.path}: tensor {name!r}: negative dimension in {shape}")
        return TensorSpec(name, dtype, shape), (start, end)

    def names(self) -> list[str]:
        return list(self.specs)

    def __contains__(self, name: str) -> bool:
        return name in self.specs

    def read(self, name: str, on_bytes: Callable[[memoryview], None] | None = None) -> torch.Tensor:
        """The tensor `name`, in its stored dtype, in freshly allocated (not mapped) memory.
        `on_bytes`: called with the raw bytes as they are read, in order, a cache-sized slice
        at a time (hashing them then reads each slice from cache, not from memory)."""
        spec = self._spec_of(name)
        return self._read_into(name, torch.empty(spec.shape, dtype=spec.dtype), 0, on_bytes)

    def read_flat(
        self, name: str, start: int, stop: int, on_bytes: Callable[[memoryview], None] | None = None
    ) -> torch.Tensor:
        """Elements [start, stop) of tensor `name` in its flat (row-major) order, as a 1-D
        tensor: a part of a tensor too large to hold whole beside its m copies (flat memory)."""
        spec = self._spec_of(name)
        if not 0 <= start <= stop <= spec.numel:
            raise CheckpointError(
                f"{self.path}: elements [{start}, {stop}) are outside tensor {name!r} "
                f"({spec.numel} elements)"
            )
        return self._read_into(name, torch.empty(stop - start, dtype=spec.dtype), start, on_bytes)

    def _spec_of(self, name: str) -> TensorSpec:
        if name not in self.specs:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        return self.specs[name]

    def _read_into(
        self, name: str, out: torch.Tensor, first: int, on_bytes: Callable | None = None
    ) -> torch.Tensor:
        """Fill `out` (not zero-filled: read straight into it) from element `first` on."""
        nbytes = out.numel() * out.element_size()
        if nbytes == 0:
            return out
        begin = self._offsets[name][0] + first * out.element_size()
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        step = nbytes if on_bytes is None else READ_SLICE
        got = 0
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            while got < nbytes:
                n = f.readinto(view[got : got + step])
                if not n:
                    break
                if on_bytes is not None:
                    on_bytes(view[got : got + n])
                got += n
        if got != nbytes:
            raise CheckpointError(f"{self.path}: tensor {name!r} truncated while reading")
        return out


def tensor_digest(data) -> str:
    """SHA-256 of one tensor's raw bytes, as `_Hasher` records it part by part (the digest of a
    commitment leaf, `mpu.io.transcript.PartsLeaf`); here only for a tensor with no bytes."""
    return hashlib.sha256(data).hexdigest()


HASH_SLICE = 64 << 10  # fits in L2: the second hash reads it from cache, not from memory
READ_SLICE = 4 * HASH_SLICE  # a read handed to `on_bytes`: still in L2, a few syscalls per MB


def _update_all(hashes: list, data) -> None:
    """Feed `data` to every hash, a cache-sized slice at a time: with two hashes of the same
    bytes (a file's and a tensor's) the second reads each slice from L2 — SHA-256 is
    memory-bound on a cold buffer (≈ 1.2 GB/s here) and compute-bound on a warm one (≈ 1.8)."""
    if len(hashes) < 2:
        for h in hashes:
            h.update(data)
        return
    view = memoryview(data).cast("B")
    for start in range(0, len(view), HASH_SLICE):
        piece = view[start : start + HASH_SLICE]
        for h in hashes:
            h.update(piece)


class _Hasher:
    """SHA-256 on a helper thread (hashlib releases the GIL on large buffers), fed in order:
    of the whole file (`file`) and of each tensor's bytes (`tensors`, name → digest)."""

    def __init__(self, *, file: bool = True) -> None:
        import queue
        import threading

        self._hash = hashlib.sha256() if file else None
        self._tensor_hashes: dict[str, hashlib._Hash] = {}  # a tensor may come in parts
        self.tensors: dict[str, str] = {}
        # a short queue: the writer waits for the hash rather than hold many buffers alive
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            data, tensor = item
            hashes = [] if self._hash is None else [self._hash]
            if tensor is not None:
                hashes.append(self._tensor_hashes.setdefault(tensor, hashlib.sha256()))
            _update_all(hashes, data)

    def update(self, data, tensor: str | None = None) -> None:
        self._queue.put((data, tensor))  # the buffer is kept alive by the queue until hashed

    def hexdigest(self) -> str | None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
            self.tensors = {n: h.hexdigest() for n, h in self._tensor_hashes.items()}
        return None if self._hash is None else self._hash.hexdigest()


class SafetensorsWriter:
    """Writes a `.safetensors` file one tensor at a time, atomically (temp file + rename).

    The layout (names, dtypes, shapes, order) is fixed when the writer opens, so the header
    can be written first; `add` must then be called for every tensor in that order.
    """

    def __init__(
        self,
        path: str | Path,
        specs: Iterable[TensorSpec],
        metadata: Mapping[str, str] | None = None,
        *,
        hash_contents: bool = False,
        hash_tensors: bool = False,
        durable: bool = True,
    ):
        """`hash_contents`: compute the file's SHA-256 while writing (on a helper thread, so
        hashing overlaps the writes), available as `sha256` after `commit()`; `hash_tensors`:
        each tensor's SHA-256 the same way, in `tensor_sha256` (a commitment's leaves). `durable`: fsync
        before the rename (data that cannot be regenerated); without it the rename is still
        atomic for a crashed process, only an OS crash could lose the data."""
        self._durable = durable
        self.path = Path(path)
        self._specs = list(specs)
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        for spec in self._specs:
            if spec.dtype not in DTYPE_NAMES:
                raise CheckpointError(f"{self.path}: cannot store dtype {spec.dtype} ({spec.name})")
            header[spec.name] = {
                "dtype": DTYPE_NAMES[spec.dtype],
                "shape": list(spec.shape),
                "data_offsets": [offset, offset + spec.nbytes],
            }
            offset += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in commit/abort
        self._hasher = _Hasher(file=hash_contents) if hash_contents or hash_tensors else None
        self._hash_tensors = hash_tensors
        self.tensor_sha256: dict[str, str] = {}
        self._synced_to = self._unsynced = 0
        self._write(struct.pack("<Q", len(raw)))
        self._write(raw)
        self._next = 0
        self._open: TensorSpec | None = None  # the tensor being written in parts
        self._open_bytes = 0
        self.sha256: str | None = None

    def _write(self, data, tensor: str | None = None) -> None:
        try:
            self._file.write(data)
        except OSError as exc:  # full disk, I/O error: name the file, not "a file"
            raise CheckpointError(f"{self.path}: cannot write ({exc.strerror or exc})") from None
        if self._hasher is not None:
            self._hasher.update(data, tensor if self._hash_tensors else None)
        self._unsynced += len(data) if isinstance(data, bytes) else data.nbytes
        if self._durable and self._unsynced >= WRITEBACK_BYTES:
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Ask the kernel to start writing the bytes so far to disk now, asynchronously, so the
        final fsync waits for the tail only (without this, dirty pages sit in memory until the
        fsync and the whole file's disk time is spent there). Also drops them from the page
        cache: a written copy is not read back here."""
        self._file.flush()
        end = self._file.tell()
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self._file.fileno(), self._synced_to, end - self._synced_to,
                             os.POSIX_FADV_DONTNEED)  # fmt: skip
        self._synced_to, self._unsynced = end, 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        spec = self.begin(name)
        if tuple(tensor.shape) != spec.shape:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} is {tensor.dtype}{tuple(tensor.shape)}, "
                f"layout says {spec.dtype}{spec.shape}"
            )
        self.write_part(tensor)
        self.end()

    def begin(self, name: str) -> TensorSpec:
        """Start tensor `name` (the layout's next), to be written in parts (`write_part`, in
        flat order) and closed by `end`: a tensor larger than memory allows is never whole."""
        if self._next >= len(self._specs):
            raise CheckpointError(f"{self.path}: unexpected extra tensor {name!r}")
        spec = self._specs[self._next]
        if name != spec.name:
            raise CheckpointError(f"{self.path}: expected tensor {spec.name!r} next, got {name!r}")
        self._open, self._open_bytes = spec, 0
        return spec

    def write_part(self, part: torch.Tensor) -> None:
        """The next elements of the open tensor, in flat order, in its stored dtype."""
        spec = self._open
        if spec is None:
            raise CheckpointError(f"{self.path}: write_part without begin")
        data = part.detach().contiguous().cpu()
        if data.dtype != spec.dtype or self._open_bytes + data.nbytes > spec.nbytes:
            raise CheckpointError(
                f"{self.path}: tensor {spec.name!r}: a part of {data.dtype}[{data.numel()}] "
                f"does not fit its layout {spec.dtype}{spec.shape}"
            )
        if data.numel():
            self._write(data.reshape(-1).view(torch.uint8).numpy(), spec.name)
            self._open_bytes += data.nbytes

    def end(self) -> None:
        """Close the open tensor; every one of its bytes must have been written."""
        spec = self._open
        if spec is None or self._open_bytes != spec.nbytes:
            name = spec.name if spec else "(none)"
            raise CheckpointError(f"{self.path}: tensor {name!r} ended before all its bytes came")
        if not spec.nbytes and self._hash_tensors:
            self.tensor_sha256[spec.name] = tensor_digest(b"")
        self._open = None
        self._next += 1

    def commit(self) -> Path:
        """Flush, fsync and move into place; fails if a tensor of the layout was never added."""
        if self._next != len(self._specs):
            missing = self._specs[self._next].name
            self.abort()
            raise CheckpointError(f"{self.path}: tensor {missing!r} was never written")
        self._file.flush()
        if self._durable:
            os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        if self._hasher is not None:
            self.sha256 = self._hasher.hexdigest()
            self.tensor_sha256.update(self._hasher.tensors)
        return self.path

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._hasher is not None:
            self._hasher.hexdigest()  # stops its thread
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._file.closed:
            self.commit()
