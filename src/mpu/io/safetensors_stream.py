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

import itertools
import json
import os
import struct
from collections.abc import Iterable, Mapping
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
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


class SafetensorsReader:
    """Validated random access to the tensors of one `.safetensors` file, one at a time."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        if size < 8:
            raise CheckpointError(f"{self.path}: truncated ({size} bytes, no header length)")
        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(
                    f"{self.path}: corrupt or truncated header (claims {header_len} bytes, file has {size})"
                )
            raw = f.read(header_len)
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{self.path}: header is not valid JSON ({exc})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise CheckpointError(f"{self.path}: __metadata__ must map strings to strings")
        self.metadata: dict[str, str] = meta
        self._data_start = 8 + header_len
        data_len = size - self._data_start
        self.specs: dict[str, TensorSpec] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
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

    def _parse_entry(self, name: str, entry: object) -> tuple[TensorSpec, tuple[int, int]]:
        try:
            dtype = DTYPES[entry["dtype"]]  # type: ignore[index]
            shape = tuple(int(s) for s in entry["shape"])  # type: ignore[index]
            start, end = (int(x) for x in entry["data_offsets"])  # type: ignore[index]
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

    def read(self, name: str) -> torch.Tensor:
        """The tensor `name`, in its stored dtype, in freshly allocated (not mapped) memory."""
        if name not in self.specs:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        spec = self.specs[name]
        start, end = self._offsets[name]
        buf = bytearray(end - start)
        with open(self.path, "rb") as f:
            f.seek(self._data_start + start)
            got = f.readinto(buf)
        if got != len(buf):
            raise CheckpointError(f"{self.path}: tensor {name!r} truncated while reading")
        if not buf:
            return torch.empty(spec.shape, dtype=spec.dtype)
        return torch.frombuffer(buf, dtype=spec.dtype).reshape(spec.shape)


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
    ):
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
        self._file.write(struct.pack("<Q", len(raw)))
        self._file.write(raw)
        self._next = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._specs):
            raise CheckpointError(f"{self.path}: unexpected extra tensor {name!r}")
        spec = self._specs[self._next]
        if name != spec.name:
            raise CheckpointError(f"{self.path}: expected tensor {spec.name!r} next, got {name!r}")
        if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} is {tensor.dtype}{tuple(tensor.shape)}, "
                f"layout says {spec.dtype}{spec.shape}"
            )
        data = tensor.detach().contiguous().cpu()
        if data.numel():
            self._file.write(data.reshape(-1).view(torch.uint8).numpy())
        self._next += 1

    def commit(self) -> Path:
        """Flush, fsync and move into place; fails if a tensor of the layout was never added."""
        if self._next != len(self._specs):
            missing = self._specs[self._next].name
            self.abort()
            raise CheckpointError(f"{self.path}: tensor {missing!r} was never written")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._file.closed:
            self.commit()
