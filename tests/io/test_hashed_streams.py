"""Hashes computed while streaming equal the hashes of the bytes at rest: the writer's file and
tensor digests (fed the same cache-sized slices), and a reader's `on_bytes` slices."""

from __future__ import annotations

import hashlib
import platform

import pytest
import torch

from mpu.errors import CheckpointError
from mpu.io.checkpoint import sha256_file
from mpu.io.memory import reuse_freed_buffers
from mpu.io.safetensors_stream import HASH_SLICE, SafetensorsReader, SafetensorsWriter, TensorSpec

# sizes around the hashing slice: empty, tiny, one slice exactly, a slice and a bit, several
SIZES = {"empty": 0, "tiny": 3, "one": HASH_SLICE // 4, "over": HASH_SLICE // 4 + 5,
         "many": 3 * HASH_SLICE + 7}  # fmt: skip


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {name: torch.randn(n, generator=g) for name, n in SIZES.items()}


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.fixture()
def written(tmp_path):
    tensors = _tensors()
    specs = [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    path = tmp_path / "w.safetensors"
    writer = SafetensorsWriter(path, specs, hash_contents=True, hash_tensors=True)
    for name, t in tensors.items():
        if name == "many":  # one tensor in uneven parts, as large tensors are written
            writer.begin(name)
            for part in t.split(HASH_SLICE // 3):
                writer.write_part(part)
            writer.end()
        else:
            writer.add(name, t)
    writer.commit()
    return path, tensors, writer


def test_the_writers_digests_are_those_of_the_bytes_at_rest(written):
    path, tensors, writer = written
    assert writer.sha256 == sha256_file(path)
    for name, t in tensors.items():
        assert writer.tensor_sha256[name] == hashlib.sha256(_raw(t)).hexdigest(), name


def test_on_bytes_sees_every_byte_in_order_and_the_tensor_is_unchanged(written):
    path, tensors, _ = written
    reader = SafetensorsReader(path)
    for name, t in tensors.items():
        seen = bytearray()
        got = reader.read(name, seen.extend)
        assert torch.equal(got, t)
        assert bytes(seen) == _raw(t), name
    seen = bytearray()
    part = reader.read_flat("many", 5, HASH_SLICE + 11, seen.extend)
    assert torch.equal(part, tensors["many"][5 : HASH_SLICE + 11])
    assert bytes(seen) == _raw(part)


def test_a_truncated_file_is_still_refused_when_read_with_on_bytes(written):
    path, _, _ = written
    reader = SafetensorsReader(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 9])  # the last tensor loses its tail after parsing
    with pytest.raises(CheckpointError, match="truncated"):
        reader.read("many", lambda b: None)


def test_buffer_reuse_applies_on_glibc_and_lets_errors_through():
    with pytest.raises(RuntimeError, match="inside"), reuse_freed_buffers() as applied:
        assert applied is (platform.libc_ver()[0] == "glibc")
        raise RuntimeError("inside")
    with reuse_freed_buffers() as again:  # usable again after an error
        assert again is applied
