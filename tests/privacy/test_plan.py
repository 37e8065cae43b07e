"""`mpu privacy plan` on the tiny TOFU world: its recommendation, run again, lands where it
predicted. Its target knows forget01 and 60 retain rows (tests/conftest.py): that is the
knowledge whose leakage is planned."""

from __future__ import annotations

import pytest

from mpu.server.plan import interpolate, measure, plan

pytestmark = pytest.mark.slow


def test_interpolation_is_linear_in_log_kappa_and_says_when_nothing_reaches_the_target():
    pts = [{"kappa": 0.1, "L": 0.9}, {"kappa": 1.0, "L": 0.1}]
    # L = 0.5 halfway between 0.9 and 0.1: halfway in log κ, √(0.1·1)
    assert interpolate(pts, 0.5) == pytest.approx(0.1**0.5)
    assert interpolate(pts, 0.95) == 0.1  # already under the target at the smallest κ
    assert interpolate(pts, 0.05) is None


def test_running_the_recommendation_lands_within_a_tenth_of_the_prediction(tofu_world, tmp_path):
    data, models = tofu_world
    knowledge = f"{data}/forget01"
    # L 0.7 falls near κ = 0.25, where the copies still keep ≥ 95% of θ's general answers
    result = plan(models / "target", models / "base", 0.7, knowledge, copies=2, limit=40)
    rec = result["recommendation"]
    assert rec is not None and rec["server.residual"] == 1.0
    # an independent publication (a fresh secret key) at the recommended κ
    again = measure(models / "target", models / "base", knowledge, kappa=rec["server.kappa"],
                    copies=2, residual=1.0, limit=40, work=tmp_path)  # fmt: skip
    assert again["L"] == pytest.approx(result["predicted_leakage"], abs=0.1)
    # the ladder's evidence is what the recommendation was read from: L falls as κ grows
    # until the target is crossed
    ells = [p["L"] for p in result["evidence"]]
    assert ells[0] > 0.7 >= min(ells)


def test_other_job_settings_reach_every_publication_and_the_recommendation(tofu_world, tmp_path):
    from mpu.errors import ConfigError
    from mpu.server.plan import describe

    data, models = tofu_world
    knowledge = f"{data}/forget01"
    with pytest.raises(ConfigError, match="emulator=off"):  # the setting reached the job
        measure(models / "target", models / "base", knowledge, kappa=0.1, copies=2, residual=1.0,
                limit=4, work=tmp_path, settings=["emulator_distill_steps=5"])  # fmt: skip
    result = plan(models / "target", models / "base", 0.99, knowledge, copies=2, limit=10,
                  ladder=(3.0,), verify=False, settings=["angles=continuous"],
                  min_capability=0)  # fmt: skip
    assert result["recommendation"]["server.angles"] == "continuous"
    assert "server.angles=continuous" in describe(result)


def test_copies_that_no_longer_work_are_never_recommended(tofu_world, tmp_path):
    """Low leakage bought by destroying the model is refused: at κ = 30 (noise thirty times
    the fine-tune on a model whose base is random) the copies keep a fraction of θ's answers
    on the general questions (about a third on this test world, whose θ never learnt them
    either), so a plan that must keep 90% of them recommends nothing and says why, while the
    same plan with the check off recommends that κ."""
    from mpu.server.plan import capability, describe, general_items

    data, models = tofu_world
    knowledge = f"{data}/forget01"
    general = general_items(knowledge, models / "target", 20)
    assert general is not None and "world_facts" in general.items.source
    assert capability([models / "target"], general)["weakest"] == 1.0
    kw = dict(copies=2, limit=20, ladder=(30.0,), verify=False, min_capability=0.9)
    broken = plan(models / "target", models / "base", 0.9, knowledge, **kw)
    c = broken["evidence"][0]["capability"]
    assert broken["recommendation"] is None and c < 0.9
    assert "working copy" in broken["why"] and f"{100 * c:.0f}%" in describe(broken)
    kw["min_capability"] = 0
    unchecked = plan(models / "target", models / "base", 0.9, knowledge, **kw)
    assert unchecked["recommendation"]["server.kappa"] == 30.0
    assert "not checked" in describe(unchecked)
    # copies that break before they stop leaking end the ladder there: more noise cannot help
    kw["ladder"], kw["min_capability"] = (1.0, 3.0, 10.0), 0.9
    early = plan(models / "target", models / "base", 1e-4, knowledge, **kw)
    assert [p["kappa"] for p in early["evidence"]] == [1.0] and early["recommendation"] is None
    assert early["evidence"][0]["L"] > 1e-4 and "still leaks" in early["why"]


def test_two_publications_of_one_plan_score_theta_and_the_base_once(tofu_world, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    """θ and the base are the same at every κ of a plan: their knowledge scores are reused
    (anchors), and the leakage read from them is the same as scoring them afresh."""
    from mpu.server.leakage import functional as F
    from mpu.server.leakage.models import model_with

    data, models = tofu_world
    calls = []
    real = F.score
    monkeypatch.setattr(F, "score", lambda model, items: calls.append(1) or real(model, items))
    anchors: dict = {}
    kw = {"copies": 2, "residual": 1.0, "limit": 8, "kappa": 0.3}
    measure(models / "target", models / "base", f"{data}/forget01", work=tmp_path / "a",
            anchors=anchors, **kw)  # fmt: skip
    n_first, calls[:] = len(calls), []
    measure(models / "target", models / "base", f"{data}/forget01", work=tmp_path / "b",
            anchors=anchors, **kw)  # fmt: skip
    assert len(calls) == n_first - 2 and set(anchors) == {"theta", "base"}
    items = F.knowledge(models / "target", f"{data}/forget01", 8)
    assert anchors["theta"] == real(model_with(models / "target"), items)  # θ's own score
