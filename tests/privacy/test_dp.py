"""DP updates: ε is opacus' own, clipping bounds every returned update, the noise has the
calibrated size, and a DP run goes through `mpu run` as its own variant into the report."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mpu.client.diff import make_delta
from mpu.errors import ConfigError
from mpu.io.checkpoint import Checkpoint
from mpu.io.delta import DeltaFile
from mpu.privacy.dp import DPConfig, epsilon, rdp_orders
from toolkit import publish_job as publish


@pytest.mark.parametrize(("z", "rounds", "m"), [(1.0, 1, 2), (2.0, 2, 3), (0.7, 5, 2)])
def test_epsilon_is_opacus_own_accounting(z, rounds, m):
    """The same composition fed step by step to opacus' public API gives the same ε."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(rounds * m):
        acc.step(noise_multiplier=z, sample_rate=1.0)
    expected = acc.get_epsilon(delta=1e-5, alphas=rdp_orders())
    assert epsilon(z, rounds * m, 1e-5) == pytest.approx(expected, rel=1e-12)
    cfg = DPConfig(clip=1.0, noise_multiplier=z, releases=rounds * m)
    assert cfg.spent() == pytest.approx(expected, rel=1e-12)


def test_a_target_epsilon_is_met_and_nearly_spent():
    cfg = DPConfig(clip=1.0, epsilon=8.0, releases=6)
    assert cfg.spent() <= 8.0 and cfg.spent() > 7.5  # opacus' search stops within its tolerance


def test_dp_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match=r"dp\.noise_multiplier or a target dp\.epsilon"):
        DPConfig(clip=1.0)
    with pytest.raises(ConfigError, match="not both"):
        DPConfig(clip=1.0, noise_multiplier=1.0, epsilon=3.0)


@pytest.fixture
def moved(tofu_world, tmp_path):
    """A published copy and the same weights moved by a known update (norm well above C)."""
    _, copies = publish(tofu_world, tmp_path, copies=2)
    after = tmp_path / "after"
    after.mkdir()
    ck = Checkpoint(copies[0])
    gen = torch.Generator().manual_seed(0)
    from safetensors.torch import save_file

    save_file({n: ck.read(n) + 0.01 * torch.randn(ck.spec(n).shape, generator=gen)
               for n in ck.names()}, str(after / "model.safetensors"))  # fmt: skip
    (after / "config.json").write_text((copies[0] / "config.json").read_text())
    return copies[0], after


def _norm(path) -> tuple[float, int]:
    d = DeltaFile(path)
    tensors = [d.read(n) for n in d.specs]
    return math.sqrt(sum(float(t.double().square().sum()) for t in tensors)), sum(
        t.numel() for t in tensors
    )


def test_clipping_bounds_every_returned_update(moved, tmp_path):
    copy, after = moved
    raw, n = _norm(make_delta(copy, after, tmp_path / "raw.safetensors"))
    for clip in (0.01, 0.1, 1.0):
        stats: dict = {}
        dp = DPConfig(clip=clip, noise_multiplier=0.0)
        norm, _ = _norm(
            make_delta(copy, after, tmp_path / f"c{clip}.safetensors", stats=stats, dp=dp)
        )
        assert norm <= clip * (1 + 1e-5)  # fp32 rounding of the scaled entries
        assert norm == pytest.approx(min(raw, clip), rel=1e-5)
        assert stats["dp"]["update_norm"] == pytest.approx(raw, rel=1e-6)
    # with noise: ‖clip(Δ) + N(0, z²C² I)‖² concentrates at C² + n·z²C² (n ≈ 10⁵ entries)
    z, clip = 0.5, 0.1
    noisy, _ = _norm(make_delta(copy, after, tmp_path / "noisy.safetensors",
                                dp=DPConfig(clip=clip, noise_multiplier=z)))  # fmt: skip
    assert noisy == pytest.approx(math.sqrt(clip**2 + n * (z * clip) ** 2), rel=0.01)


def test_a_dp_setting_that_drowns_the_update_is_said_plainly(moved, tmp_path, caplog):
    """Noise of norm z·C·√d against an update of norm ≤ C: the ratio is reported and, above 1,
    the user is told that no clip helps (the update will undo little or nothing)."""
    copy, after = moved
    n = _norm(make_delta(copy, after, tmp_path / "raw.safetensors"))[1]
    for clip, z in ((0.1, 0.5), (1e-3, 0.5)):  # ‖Δ‖ > 0.1: the ratio does not depend on C
        stats: dict = {}
        with caplog.at_level("WARNING", logger="mpu.client"):
            make_delta(copy, after, tmp_path / f"z{clip}.safetensors", stats=stats,
                       dp=DPConfig(clip=clip, noise_multiplier=z))  # fmt: skip
        assert stats["dp"]["noise_to_update"] == pytest.approx(z * math.sqrt(n), rel=1e-9)
        assert "No clip helps" in caplog.text and f"z{clip}.safetensors" in caplog.text
        caplog.clear()
    stats = {}
    with caplog.at_level("WARNING", logger="mpu.client"):  # noise well under the update
        make_delta(copy, after, tmp_path / "quiet.safetensors", stats=stats,
                   dp=DPConfig(clip=0.1, noise_multiplier=0.5 / n))  # fmt: skip
    assert stats["dp"]["noise_to_update"] < 1 and "No clip helps" not in caplog.text


@pytest.mark.slow
def test_a_dp_run_is_its_own_variant_in_the_report(tofu_world, tmp_path):
    from mpu.cli import main

    data, models = tofu_world
    out = tmp_path / "run"
    code = main(["run", f"data={data}", f"models={models}", f"out={out}", "methods=[GradDiff]",
                 "forget_split=forget01", "eval_limit=6", "eval_max_new_tokens=8",
                 "progress=false", "client.precision=fp32", "client.lr=1e-3", "workers=1",
                 "variants=[mpu,dp]", "server.copies=2", "dp.clip=1.0", "dp.epsilon=8"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    rows = {r["variant"]: r for r in report["runs"] if r["method"]}
    assert set(rows) == {"mpu", "dp"}
    dp = rows["dp"]
    assert dp["summary"]["model_utility"] is not None and (out / dp["eval_file"]).is_file()
    # GradDiff runs 1 round of m = 2 copies: two releases at the z that gives ε ≤ 8
    assert dp["privacy"]["dp_epsilon"] == pytest.approx(
        DPConfig(clip=1.0, epsilon=8, releases=2).spent()
    )
    assert dp["privacy"]["dp_epsilon"] <= 8
    for row in rows.values():  # both were audited and their transcripts verified
        p = row["privacy"]
        assert p["one_copy_aligned"] > 0 and p["transcript"]["rounds_replayed"] == 1
        assert p["token_recall_at_k"] is not None and 0 <= p["membership_auc"] <= 1
    html = (out / "report.html").read_text()
    assert 'id="privacy"' in html and "DP ε" in html
    md = (out / "report.md").read_text()
    assert "## What the protocol protected" in md and "-DP" in md


@pytest.mark.slow
def test_a_dp_sgd_run_reports_the_epsilon_of_its_own_accounting(tofu_world, tmp_path):
    """dp.unit=example through `mpu run`: the client trains with DP-SGD, the returned updates
    carry no extra noise, and the report's ε is the trainer's accounting (q, the job's steps,
    the m copies' shared sampling), at most the target."""
    from mpu.cli import main

    data, models = tofu_world
    out = tmp_path / "run"
    code = main(["run", f"data={data}", f"models={models}", f"out={out}", "methods=[GradDiff]",
                 "forget_split=forget01", "eval_limit=6", "eval_max_new_tokens=8",
                 "progress=false", "client.precision=fp32", "client.lr=1e-3", "workers=1",
                 "variants=[dp]", "server.copies=2", "dp.unit=example", "dp.clip=1.0",
                 "dp.epsilon=8"])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    dp = next(r for r in report["runs"] if r["variant"] == "dp")["privacy"]
    acct = json.loads((out / "eval" / "GradDiff-dp" / "dp_accounting.json").read_text())
    assert acct["copies"] == 2 and 0 < acct["sample_rate"] <= 1 and acct["steps"] >= 1
    expected = DPConfig(clip=1.0, epsilon=8, unit="example", copies=2)
    assert dp["dp_unit"] == "example"
    assert dp["dp_epsilon"] == pytest.approx(
        expected.example_spent(acct["sample_rate"], acct["steps"]), rel=1e-9
    )
    assert 7 < dp["dp_epsilon"] <= 8
