"""Issue 3, must-show 1: every family's copies compute the original function (κ = 0) and hide
every protected tensor (κ > 0)."""

import pytest
import torch

from mpu.arch.base import Role
from mpu.io.checkpoint import Checkpoint
from mpu.server.config import JobConfig
from mpu.server.job import Server, classify
from toolkit import build_pair, family_configs, logits_of, relative_error

FAMILIES = sorted(family_configs())
IDS = torch.tensor([[1, 17, 42, 99, 3, 150, 7, 64, 23, 88, 120, 5, 9, 31, 77, 140]] * 2)


@pytest.mark.parametrize("angles", ["continuous", "quarter_turn"])
@pytest.mark.parametrize("family", FAMILIES)
def test_kappa_zero_copy_is_function_preserving(family, angles, tmp_path):
    model, base = build_pair(family_configs()[family], tmp_path)
    server = Server.init(model, base, tmp_path / "w", JobConfig(copies=2, kappa=0.0, angles=angles))
    copies = server.publish(tmp_path / "pub", progress=False)
    reference = logits_of(model, IDS)
    theta = Checkpoint(model)
    for copy in copies:
        assert relative_error(logits_of(copy, IDS), reference) <= 1e-5
        published = Checkpoint(copy)
        changed = [n for n in theta.names() if not torch.equal(published.read(n), theta.read(n))]
        assert changed, "the reparameterization left every tensor unchanged"


@pytest.mark.parametrize("family", FAMILIES)
def test_positive_kappa_changes_every_protected_tensor(family, tmp_path):
    model, base = build_pair(family_configs()[family], tmp_path)
    server = Server.init(model, base, tmp_path / "w", JobConfig(copies=2, kappa=0.05))
    theta = Checkpoint(model)
    layout = classify(theta)
    for copy in server.publish(tmp_path / "pub", progress=False):
        published = Checkpoint(copy)
        for name, info in layout.tensors.items():
            same = torch.equal(published.read(name), theta.read(name))
            if info.layer is not None:
                assert not same, f"{name} of {copy.name} equals the original"
            else:
                assert (
                    info.role is Role.OUTSIDE and same
                )  # default noise_scope=blocks sends these exactly


def test_noise_scope_all_also_noises_embeddings(tmp_path):
    model, base = build_pair(family_configs()["llama"], tmp_path)
    server = Server.init(
        model, base, tmp_path / "w", JobConfig(copies=2, kappa=0.05, noise_scope="all")
    )
    theta = Checkpoint(model)
    for copy in server.publish(tmp_path / "pub", progress=False):
        published = Checkpoint(copy)
        assert all(not torch.equal(published.read(n), theta.read(n)) for n in theta.names())
