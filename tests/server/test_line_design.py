"""Issue 25: the default job publishes copies on one noise line and weights them to extrapolate
to zero noise; the settings that cannot work are refused up front (docs/protocol.md §3, §7)."""

import pytest

from mpu.errors import ConfigError
from mpu.io.checkpoint import Checkpoint
from mpu.protocol.aggregate import MAX_AMPLIFICATION, amplification
from mpu.server.config import JobConfig, draw_alphas
from mpu.server.job import Server
from mpu.server.publish import TransformCache, noised
from toolkit import build_pair, family_configs


def test_the_default_is_four_line_copies_extrapolated_and_the_paper_is_an_option():
    cfg = JobConfig()
    assert (cfg.aggregation, cfg.copies, cfg.noise_design, cfg.angles) == (
        "extrapolate",
        4,
        "line",
        "quarter_turn",
    )
    assert cfg.weights(draw_alphas(cfg)) == pytest.approx([2 / 3, 2 / 3, -1 / 6, -1 / 6])
    paper = JobConfig(copies=2, aggregation="harmonic", angles="continuous")
    assert paper.noise_design == "zero_sum"
    assert paper.weights(draw_alphas(paper)) == pytest.approx([2 / 3, 1 / 3])


def test_crowded_nodes_are_refused_at_init_with_the_weights_they_would_need():
    with pytest.raises(ConfigError, match="too close") as err:
        JobConfig(copies=4, alphas="1,1,1.01,2")
    assert "sum to" in str(err.value)
    # the same α are fine for the paper's harmonic weights, which are all positive
    JobConfig(copies=4, alphas="1,1,1.01,2", aggregation="harmonic")


def test_secret_random_alphas_are_redrawn_until_usable_and_a_hopeless_range_is_refused():
    cfg = JobConfig(copies=4, alphas="random")
    draws = [draw_alphas(cfg) for _ in range(50)]
    assert all(amplification(cfg.weights(a)) <= MAX_AMPLIFICATION for a in draws)
    assert len({tuple(a) for a in draws}) == 50  # drawn, not a fixed fallback
    with pytest.raises(ConfigError, match="widen alpha_min"):
        JobConfig(copies=4, alphas="random", alpha_min=1.0, alpha_max=1.02)


def test_published_copies_lie_on_one_line_through_theta_at_their_nodes(tmp_path):
    """Undo each copy's map: P_k − θ = t_k·y with the same y, t = (1, −1, 2, −2) by copy k."""
    model, base = build_pair(family_configs()["llama"], tmp_path)
    server = Server.init(model, base, tmp_path / "w", JobConfig(kappa=0.1, gate=False))
    folders = server.publish(tmp_path / "pub", progress=False)
    layout = server.layout()
    k_of = {r.folder: r.k for r in server.state.copy_records(1)}
    maps = TransformCache(server.secret_streams(), 1, layout, server.cfg)
    theta = Checkpoint(model)
    nodes = [1.0, -1.0, 2.0, -2.0]
    checked = 0
    for name in theta.names():
        if not noised(name, layout, server.cfg):
            continue
        x = theta.read(name).double()
        moves = {}
        for folder in folders:
            k = k_of[folder.name]
            undone = maps.apply(Checkpoint(folder).read(name), name, k, inverse=True)
            moves[k] = undone.double() - x
        y = moves[0]
        assert float(y.abs().max()) > 0
        for k, t in enumerate(nodes):
            # fp32 publication: each entry carries ≤ 1 rounding of |θ + t·y| (u = 2⁻²⁴)
            tol = 4 * 2**-24 * float((x.abs() + abs(t) * y.abs()).max())
            assert float((moves[k] - t * y).abs().max()) <= tol, (name, k)
        checked += 1
    assert checked > 0


def test_lines_need_extrapolation_and_the_same_copies_on_each_line():
    assert JobConfig(copies=4, lines=2).weights([1.0] * 4) == pytest.approx([0.25] * 4)
    assert draw_alphas(JobConfig(copies=8, lines=2)) == [1.0, 1.0, 2.0, 2.0] * 2
    for bad in (dict(copies=4, lines=3), dict(copies=4, lines=4), dict(copies=4, lines=0)):
        with pytest.raises(ConfigError, match="lines="):
            JobConfig(**bad)
    with pytest.raises(ConfigError, match="aggregation=extrapolate"):
        JobConfig(copies=4, lines=2, aggregation="harmonic")


def test_two_lines_publish_two_independent_directions(tmp_path):
    """copies=4 lines=2: copies 0, 1 at ±y₁ and copies 2, 3 at ±y₂, with y₁ and y₂ independent
    draws (nearly orthogonal in a tensor of many entries)."""
    model, base = build_pair(family_configs()["llama"], tmp_path)
    cfg = JobConfig(kappa=0.1, lines=2, gate=False)
    server = Server.init(model, base, tmp_path / "w", cfg)
    folders = server.publish(tmp_path / "pub", progress=False)
    layout, theta = server.layout(), Checkpoint(model)
    k_of = {r.folder: r.k for r in server.state.copy_records(1)}
    maps = TransformCache(server.secret_streams(), 1, layout, server.cfg)
    name = next(n for n in theta.names() if noised(n, layout, cfg) and theta.read(n).numel() > 500)
    x = theta.read(name).double()
    moves = {k_of[f.name]: maps.apply(Checkpoint(f).read(name), name, k_of[f.name],
                                      inverse=True).double() - x for f in folders}  # fmt: skip
    tol = 4 * 2**-24 * float(x.abs().max() + 2 * moves[0].abs().max())
    assert float((moves[1] + moves[0]).abs().max()) <= tol
    assert float((moves[3] + moves[2]).abs().max()) <= tol
    y1, y2 = moves[0].flatten(), moves[2].flatten()
    cos = float(y1 @ y2 / (y1.norm() * y2.norm()))
    assert abs(cos) < 4 / y1.numel() ** 0.5  # independent Gaussian directions: |cos| ~ 1/√n
