"""Issue 3, must-show 5: bad input is refused with a message naming the file and the fault,
and the server workdir is left byte-for-byte unchanged."""

import dataclasses
import shutil

import pytest
import torch

from mpu.errors import CheckpointError, MPUError, UnsupportedArchitectureError, UpdateRejectedError
from mpu.server.config import JobConfig
from mpu.server.job import Server
from toolkit import build_pair, family_configs, snapshot, write_delta


def _refused(server, deltas, match, error=UpdateRejectedError):
    before = snapshot(server.workdir)
    with pytest.raises(error, match=match):
        server.aggregate(deltas, progress=False)
    assert snapshot(server.workdir) == before
    assert Server(server.workdir).round == server.round


def test_truncated_delta(job, tmp_path):
    server, copies, *_ = job
    good = write_delta(copies[0], tmp_path / "a.safetensors")
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(good.read_bytes()[:-100])
    other = write_delta(copies[1], tmp_path / "b.safetensors")
    _refused(server, [bad, other], r"trunc\.safetensors.*truncated")


def test_corrupted_header(job, tmp_path):
    server, copies, *_ = job
    bad = write_delta(copies[0], tmp_path / "corrupt.safetensors")
    data = bytearray(bad.read_bytes())
    data[8:40] = b"\xff" * 32
    bad.write_bytes(bytes(data))
    _refused(
        server,
        [bad, write_delta(copies[1], tmp_path / "b.safetensors")],
        r"corrupt\.safetensors.*JSON",
    )


def test_wrong_shape(job, tmp_path):
    server, copies, *_ = job
    name = "model.layers.0.mlp.up_proj.weight"

    def reshape(n, t):
        return torch.zeros(t.shape[0] + 1, t.shape[1]) if n == name else t

    bad = write_delta(copies[0], tmp_path / "shape.safetensors", reshape)
    _refused(
        server,
        [bad, write_delta(copies[1], tmp_path / "b.safetensors")],
        rf"shape\.safetensors.*{name}.*shape",
    )


def test_wrong_dtype(job, tmp_path):
    server, copies, *_ = job
    bad = write_delta(copies[0], tmp_path / "half.safetensors", dtype=torch.float16)
    _refused(
        server,
        [bad, write_delta(copies[1], tmp_path / "b.safetensors")],
        r"half\.safetensors.*float32",
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30])
def test_non_finite_values(job, tmp_path, value):
    """NaN/Inf are refused; so is a finite tensor whose norm overflows fp32 (1e30² > 3.4e38)."""
    server, copies, *_ = job
    name = "model.layers.1.self_attn.k_proj.weight"

    def poison(n, t):
        if n == name:
            t[0, 0] = value
        return t

    bad = write_delta(copies[1], tmp_path / "nan.safetensors", poison)
    _refused(
        server,
        [write_delta(copies[0], tmp_path / "a.safetensors"), bad],
        rf"nan\.safetensors.*{name}.*" + ("NaN/Inf" if value != 1e30 else "overflows float32"),
    )


def test_missing_copy(job, tmp_path):
    server, copies, *_ = job
    _refused(
        server,
        [write_delta(copies[0], tmp_path / "a.safetensors")],
        r"missing update for copy-2.*subset",
    )


def test_same_copy_twice(job, tmp_path):
    server, copies, *_ = job
    a = write_delta(copies[0], tmp_path / "a.safetensors")
    a2 = write_delta(copies[0], tmp_path / "a2.safetensors")
    _refused(server, [a, a2], r"a2\.safetensors.*given twice")


def test_forged_ticket(job, tmp_path):
    server, copies, *_ = job
    from mpu.io.delta import read_ticket

    forged = dataclasses.replace(read_ticket(copies[0]), tag="0" * 64)
    bad = write_delta(copies[0], tmp_path / "forged.safetensors", ticket=forged)
    _refused(
        server,
        [bad, write_delta(copies[1], tmp_path / "b.safetensors")],
        r"forged\.safetensors.*signature",
    )


def test_update_from_another_job(job, tmp_path):
    server, copies, model, base = job
    other = Server.init(model, base, tmp_path / "w2", JobConfig(copies=2, kappa=0.02))
    foreign = other.publish(tmp_path / "pub2", progress=False)
    bad = write_delta(foreign[0], tmp_path / "foreign.safetensors")
    _refused(
        server,
        [bad, write_delta(copies[1], tmp_path / "b.safetensors")],
        r"foreign\.safetensors.*another job",
    )


def test_update_for_the_wrong_round(job, tmp_path):
    server, copies, *_ = job
    old = [write_delta(c, tmp_path / f"r1-{i}.safetensors") for i, c in enumerate(copies)]
    server.aggregate(old, progress=False)
    server.publish(tmp_path / "pub-r2", progress=False)
    _refused(server, old, r"r1-0\.safetensors.*round 1.*round 2")


def test_not_a_delta_file(job, tmp_path):
    server, copies, model, _ = job
    _refused(
        server, [model / "model.safetensors", copies[1]], r"model\.safetensors.*not an MPU delta"
    )


def test_unsupported_architecture(tmp_path):
    from transformers import GPT2Config

    model, base = build_pair(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64), tmp_path)
    with pytest.raises(UnsupportedArchitectureError, match="unsupported architecture 'gpt2'"):
        Server.init(model, base, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_base_with_another_layout(tmp_path):
    cfg = family_configs()["llama"]
    model, _ = build_pair(cfg, tmp_path / "a")
    _, other_base = build_pair(
        type(cfg)(**{**cfg.to_dict(), "intermediate_size": 128}), tmp_path / "b"
    )
    with pytest.raises(CheckpointError, match="base"):
        Server.init(model, other_base, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_base_equal_to_model_is_refused_at_init(tmp_path):
    model, _ = build_pair(family_configs()["llama"], tmp_path)
    with pytest.raises(MPUError, match="σ = 0"):
        Server.init(model, model, tmp_path / "w", JobConfig(kappa=0.01))
    assert not (tmp_path / "w").exists()  # nothing created, nothing to clean up


def test_truncated_model_checkpoint(tmp_path):
    model, base = build_pair(family_configs()["llama"], tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        Server.init(model, base, tmp_path / "w")


def test_client_diff_rejects_edited_copy(job, tmp_path):
    from mpu.client.diff import make_delta

    _, copies, *_ = job
    edited = tmp_path / "edited"
    shutil.copytree(copies[0], edited)
    data = bytearray((edited / "model.safetensors").read_bytes())
    data[-4:] = b"\x00\x00\x80\x3f"
    (edited / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the copy's ticket"):
        make_delta(edited, copies[0], tmp_path / "d.safetensors")
