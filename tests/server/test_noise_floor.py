"""A noise floor and ceiling: no setting publishes θ (or T(θ)) in a noised tensor, and no
setting drowns a copy in noise a thousand times the fine-tuning change (issue 30, must-show 3)."""

from __future__ import annotations

import pytest

from mpu.errors import ConfigError
from mpu.io.checkpoint import Checkpoint
from mpu.server.config import JobConfig
from mpu.server.job import Server
from mpu.server.publish import TransformCache, noised
from mpu.server.state import round_dir, save_state
from toolkit import build_pair, family_configs, snapshot


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return build_pair(family_configs()["llama"], tmp_path_factory.mktemp("pair"))


@pytest.mark.parametrize("reparameterize", [True, False])
def test_a_vanishing_alpha_is_refused_at_init_with_the_floor_stated(pair, tmp_path, reparameterize):
    model, base = pair
    cfg = JobConfig(kappa=0.01, copies=2, alphas="1e-300,1", reparameterize=reparameterize,
                    gate=False)  # fmt: skip
    with pytest.raises(ConfigError, match=r"α = 1e-300\) would add noise .* under the floor"):
        Server.init(model, base, tmp_path / "w", cfg)
    assert not (tmp_path / "w").exists()


def test_a_huge_alpha_is_refused_when_the_settings_are_read():
    with pytest.raises(ConfigError, match=r"largest α·κ is 1e\+298 \(> 100\)"):
        JobConfig(kappa=0.01, copies=2, alphas="1,1e300")
    with pytest.raises(ConfigError, match="largest α·κ"):
        JobConfig(kappa=10, copies=2, alphas="random", alpha_max=50)


def test_no_noised_tensor_of_a_copy_equals_theta_or_its_map(pair, tmp_path):
    model, base = pair
    server = Server.init(model, base, tmp_path / "w", JobConfig(kappa=0.01, copies=4, gate=False))
    copies = server.publish(tmp_path / "out", progress=False)
    theta = Checkpoint(round_dir(server.workdir, 1))
    layout = server.layout(theta)
    maps = TransformCache(server.secret_streams(), 1, layout, server.cfg)
    k_of = {r.folder: r.k for r in server.state.copy_records(1)}
    moved = total = 0
    for folder in copies:
        ck = Checkpoint(folder)
        for name in theta.names():
            if not noised(name, layout, server.cfg) or name in layout.tied:
                continue
            undone = maps.apply(ck.read(name), name, k_of[folder.name], inverse=True)
            changed = int((undone != theta.read(name)).sum())
            assert changed > 0, (folder.name, name, "equals θ")
            moved, total = moved + changed, total + undone.numel()
    # fp32, noise ~1e-3 of the entries against a rounding step ~1e-7: all but a few entries
    # move. Per tensor a small one (a 32-entry norm whose noise is near its rounding step) can
    # keep an entry by chance with a fresh key, so the share is taken over all of them
    assert moved / total > 0.99, moved / total


def test_publish_checks_the_floor_again_with_the_round_s_noise(pair, tmp_path):
    model, base = pair
    server = Server.init(model, base, tmp_path / "w", JobConfig(kappa=0.01, copies=2, gate=False))
    server.state.sigmas["1"] = {key: 1e-30 for key in server.state.sigmas["1"]}
    save_state(server.workdir, server.state)
    before = snapshot(server.workdir)
    with pytest.raises(ConfigError, match="under the floor"):
        Server(server.workdir).publish(tmp_path / "out", progress=False)
    assert snapshot(server.workdir) == before
    assert not any((tmp_path / "out").glob("copy-*"))
