"""Hugging Face model folders as streams of tensors: read one, write one, keep the sharding.

A checkpoint is `config.json` plus either `model.safetensors` or sharded files listed in
`model.safetensors.index.json`. Everything else in the folder (tokenizer, generation config,
chat template) is an auxiliary file copied verbatim into every folder we derive from it.
PyTorch `.bin` weights are refused: they execute code on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from mpu.errors import CheckpointError
from mpu.io.atomic import atomic_write_bytes as atomic_write_bytes  # re-exported
from mpu.io.atomic import atomic_write_json
from mpu.io.safetensors_stream import SafetensorsReader, SafetensorsWriter, TensorSpec

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
TICKET_FILE = "mpu-ticket.json"


def staging_name(dest: Path, kind: str = "staging") -> Path:
    """A hidden sibling of `dest` that `clean_debris` recognises: `.NAME.KIND-xxxxxxxx`."""
    return dest.with_name(f".{dest.name}.{kind}-{uuid.uuid4().hex[:8]}")


def clean_debris(folder: str | Path, only: str | None = None) -> list[Path]:
    """Remove what a crash left in `folder`: staging folders and temp files of atomic writes
    (hidden names `.NAME.staging-*`, `.NAME.old-*`, `.NAME.tmp-*`; with `only`, of NAME only)."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        name = p.name
        if only is not None and not name.startswith(f".{only}."):
            continue
        if name.startswith(".") and any(f".{k}-" in name for k in ("staging", "old", "tmp")):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_folder(dest: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Build a folder under a hidden staging name beside `dest`, then rename it into place.

    A crash (or an exception in the block) leaves `dest` as it was and only a staging folder
    that `clean_debris` removes. An existing `dest` is replaced when `replace`, else an error.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = staging_name(dest)
    stage.mkdir()
    try:
        yield stage
        if dest.exists():
            if not replace:
                raise CheckpointError(f"{dest}: already exists")
            old = staging_name(dest, "old")
            os.replace(dest, old)
            os.replace(stage, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


MAX_JSON_BYTES = 64 * 1024 * 1024


def read_json(path: str | Path, what: str = "file", *, any_json: bool = False):
    """A JSON file as a dict (any JSON value with `any_json`); every fault is one CheckpointError."""
    path = Path(path)
    try:
        if path.is_dir():
            raise CheckpointError(f"{path}: {what} is a folder, not a file")
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: {what} is larger than {MAX_JSON_BYTES >> 20} MiB")
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: {what} is nested too deeply to be a valid {what}") from None
    if not any_json and not isinstance(obj, dict):
        raise CheckpointError(f"{path}: {what} must be a JSON object")
    return obj


def file_chunks(path: str | Path, chunk: int = 1 << 22) -> Iterator[bytes]:
    """The file's bytes in `chunk`-byte pieces (a model-sized file is never held whole)."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            yield block


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    for block in file_chunks(path, chunk):
        h.update(block)
    return h.hexdigest()


class Checkpoint:
    """Read-only view of a model folder's weights, tensor by tensor, in file order."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a model folder (directory not found)")
        if not (self.path / "config.json").is_file():
            raise CheckpointError(f"{self.path}: not a model folder (no config.json)")
        if (self.path / INDEX).is_file():
            index = read_json(self.path / INDEX, "safetensors index")
            weight_map = index.get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{self.path / INDEX}: missing or empty weight_map")
            files: dict[str, list[str]] = {}
            for name, fname in weight_map.items():
                files.setdefault(fname, []).append(name)
        elif (self.path / SINGLE).is_file():
            files = {SINGLE: []}
        else:
            others = sorted(p.name for p in self.path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
            hint = f" (found {', '.join(others)}; convert to safetensors)" if others else ""
            raise CheckpointError(f"{self.path}: no model.safetensors or {INDEX}{hint}")
        self.readers: dict[str, SafetensorsReader] = {}
        self.file_of: dict[str, str] = {}
        for fname, listed in files.items():
            reader = SafetensorsReader(self.path / fname)
            if listed and set(listed) != set(reader.names()):
                extra = sorted(set(listed) ^ set(reader.names()))[:3]
                raise CheckpointError(f"{self.path / fname}: index and file disagree on {extra}")
            self.readers[fname] = reader
            for name in reader.names():
                if name in self.file_of:
                    raise CheckpointError(f"{self.path}: tensor {name!r} stored twice")
                self.file_of[name] = fname

    @property
    def config(self) -> dict:
        return read_json(self.path / "config.json", "config.json")

    def names(self) -> list[str]:
        return list(self.file_of)

    def spec(self, name: str) -> TensorSpec:
        return self.readers[self.file_of[name]].specs[name]

    def read(self, name: str) -> torch.Tensor:
        if name not in self.file_of:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        return self.readers[self.file_of[name]].read(name)

    def read_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements [start, stop) of tensor `name`, flat (see SafetensorsReader.read_flat)."""
        if name not in self.file_of:
            raise CheckpointError(f"{self.path}: no tensor named {name!r}")
        return self.readers[self.file_of[name]].read_flat(name, start, stop)

    def layout(self) -> list[tuple[str, list[TensorSpec]]]:
        """(file name, tensor specs in file order) per weight file."""
        return [(f, list(r.specs.values())) for f, r in self.readers.items()]

    def weight_files(self) -> list[Path]:
        return [self.path / f for f in self.readers]

    def aux_files(self) -> list[Path]:
        skip = {INDEX, TICKET_FILE, *self.readers}
        return sorted(
            p
            for p in self.path.iterdir()
            if p.is_file() and p.name not in skip and p.suffix not in WEIGHT_SUFFIXES
        )

    def n_params(self) -> int:
        """Parameters stored in the folder, from the headers alone (no weights read)."""
        return sum(self.spec(name).numel for name in self.names())

    def sha256(self) -> dict[str, str]:
        return {f: sha256_file(self.path / f) for f in self.readers}

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name in self.names():
            yield name, self.read(name)


class CheckpointWriter:
    """Writes a model folder with a given sharded layout, one tensor at a time, in order.

    Files go into a hidden staging folder beside `out`; `commit()` renames it into place, so a
    crash never leaves a half-written model folder under the final name.
    """

    def __init__(
        self,
        out: str | Path,
        layout: list[tuple[str, list[TensorSpec]]],
        *,
        aux_from: Checkpoint | None = None,
        config_updates: dict | None = None,
        metadata: dict[str, str] | None = None,
        stage_in: Path | None = None,
        hash_contents: bool = False,
        hash_tensors: bool = False,
        durable: bool = True,
    ):
        """`hash_contents`: SHA-256 of each weight file (`sha256`); `hash_tensors`: of each
        tensor (`tensor_sha256`, and `commitment` after `commit()`), both computed while
        writing, on helper threads."""
        self.out = Path(out)
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise CheckpointError(f"{self.out}: output exists and is not an empty folder")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.stage = staging_name(self.out)
        if stage_in is not None and same_filesystem(stage_in, self.out.parent):
            self.stage = staging_name(Path(stage_in) / self.out.name)  # renamed in place at commit
        self.stage.mkdir(parents=True)
        self.sha256: dict[str, str] = {}  # weight file → SHA-256, with hash_contents
        self._hash = hash_contents
        self._hash_tensors = hash_tensors
        self.tensor_sha256: dict[str, str] = {}
        self._durable = durable
        self._layout = layout
        self._metadata = {"format": "pt", **(metadata or {})}
        self._file_idx = -1
        self._remaining: list[str] = []
        self._writer: SafetensorsWriter | None = None
        if aux_from is not None:
            for p in aux_from.aux_files():
                shutil.copy2(p, self.stage / p.name)
            config = aux_from.config
            config.update(config_updates or {})
            atomic_write_json(self.stage / "config.json", config)
        if len(layout) > 1:
            weight_map = {s.name: f for f, specs in layout for s in specs}
            total = sum(s.nbytes for _, specs in layout for s in specs)
            atomic_write_json(
                self.stage / INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map}
            )

    def _finish_file(self) -> None:
        assert self._writer is not None
        self._writer.commit()
        if self._hash:
            self.sha256[self._writer.path.name] = self._writer.sha256
        self.tensor_sha256.update(self._writer.tensor_sha256)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        self._file_for(name).add(name, tensor)

    def begin(self, name: str) -> TensorSpec:
        """Start a tensor written in parts (`write_part`, then `end`): see SafetensorsWriter."""
        return self._file_for(name).begin(name)

    def write_part(self, part: torch.Tensor) -> None:
        assert self._writer is not None
        self._writer.write_part(part)

    def end(self) -> None:
        assert self._writer is not None
        self._writer.end()

    def _file_for(self, name: str) -> SafetensorsWriter:
        """The weight file `name` goes into (opening the next one when the current is full)."""
        if not self._remaining:
            if self._writer is not None:
                self._finish_file()
            self._file_idx += 1
            if self._file_idx >= len(self._layout):
                raise CheckpointError(f"{self.out}: unexpected extra tensor {name!r}")
            fname, specs = self._layout[self._file_idx]
            self._writer = SafetensorsWriter(
                self.stage / fname,
                specs,
                self._metadata,
                hash_contents=self._hash,
                hash_tensors=self._hash_tensors,
                durable=self._durable,
            )
            self._remaining = [s.name for s in specs]
        self._remaining.pop(0)
        assert self._writer is not None
        return self._writer

    def commit(self, before_rename: Callable[[Path], None] | None = None) -> Path:
        """Finish the weight files, let `before_rename(stage)` add files, then move into place."""
        if self._writer is not None:
            self._finish_file()
            self._writer = None
        if self._file_idx != len(self._layout) - 1 or self._remaining:
            self.abort()
            raise CheckpointError(f"{self.out}: not every tensor of the layout was written")
        if before_rename is not None:
            before_rename(self.stage)
        if self.out.exists():
            self.out.rmdir()  # empty, checked in __init__
        os.replace(self.stage, self.out)
        return self.out

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
        shutil.rmtree(self.stage, ignore_errors=True)

    @property
    def commitment(self) -> str:
        """The written tensors' commitment (`mpu.io.transcript`); needs `hash_tensors`."""
        from mpu.io.transcript import combine

        specs = {s.name: s for _, specs in self._layout for s in specs}
        return combine(
            {n: (specs[n].dtype, specs[n].shape, d) for n, d in self.tensor_sha256.items()}
        )


def same_filesystem(a: str | Path, b: str | Path) -> bool:
    """Whether a rename from under `a` to under `b` is atomic (same device)."""
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def set_mtimes(folder: str | Path, when: float) -> None:
    """Give every file and folder under (and including) `folder` the modification time `when`.

    Published copies carry one fixed time, so neither their files' nor their folders' times
    (which `tar` and `rsync -a` preserve) tell in which order the server wrote them.
    """
    folder = Path(folder)
    for p in sorted(folder.rglob("*"), reverse=True):
        os.utime(p, (when, when), follow_symlinks=False)
    os.utime(folder, (when, when))


def retype_layout(
    layout: list[tuple[str, list[TensorSpec]]], dtype_of: dict[str, torch.dtype]
) -> list[tuple[str, list[TensorSpec]]]:
    """The same layout with some tensors stored in another dtype."""
    return [
        (f, [TensorSpec(s.name, dtype_of.get(s.name, s.dtype), s.shape) for s in specs])
        for f, specs in layout
    ]
