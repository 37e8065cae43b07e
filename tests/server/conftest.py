import hashlib
from pathlib import Path

import pytest
import torch
from tiny_models import build_pair, family_configs

from mpu.io.checkpoint import Checkpoint
from mpu.io.delta import delta_metadata, read_ticket
from mpu.io.safetensors_stream import SafetensorsWriter, TensorSpec
from mpu.server.config import JobConfig
from mpu.server.job import Server


def snapshot(folder: Path) -> dict[str, str]:
    """Content hash of every file under `folder` (the lock file is created empty and never changes)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_delta(
    copy: Path,
    path: Path,
    value=lambda name, t: torch.zeros_like(t),
    dtype=torch.float32,
    ticket=None,
):
    """A delta for `copy` whose tensors are value(name, zeros) — lets tests craft bad updates."""
    ck = Checkpoint(copy)
    tensors = {
        n: value(n, torch.zeros(ck.spec(n).shape, dtype=torch.float32)).to(dtype)
        for n in ck.names()
    }
    specs = [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    with SafetensorsWriter(path, specs, delta_metadata(ticket or read_ticket(copy))) as w:
        for n, t in tensors.items():
            w.add(n, t)
    return path


@pytest.fixture
def job(tmp_path):
    """A published round-1 job on a tiny Llama with m = 2: (server, copies, model, base)."""
    model, base = build_pair(family_configs()["llama"], tmp_path / "m")
    server = Server.init(
        model, base, tmp_path / "w", JobConfig(copies=2, kappa=0.02, alphas="random")
    )
    copies = server.publish(tmp_path / "pub", progress=False)
    return server, copies, model, base
