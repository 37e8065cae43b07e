"""Functional leakage and the calibrated membership test, on a real job of the tiny TOFU world.

The tiny target was fine-tuned on forget01 and the first 60 rows of retain99 (tests/conftest.py):
that is θ's knowledge here, and holdout10 is what it never saw."""

from __future__ import annotations

import math

import pytest

from mpu.data import load_split
from mpu.io.checkpoint import Checkpoint
from mpu.server.leakage import audit, load, markdown
from mpu.server.leakage.functional import encode_rows, knowledge_rows
from mpu.server.leakage.updates import calibrated_membership, random_like
from mpu.server.state import round_dir

pytestmark = pytest.mark.slow


def test_the_leakage_scale_is_one_at_theta_and_zero_at_the_base(tofu_world, round1, tmp_path):
    data, _ = tofu_world
    server, copies, _ = round1
    result = audit(server.workdir, round_=1, copies_dir=copies[0].parent,
                   knowledge=f"{data}/forget01", out=tmp_path)  # fmt: skip
    f = result["functional"]
    # the scale's two ends, exactly: (s − s_b)/(s_θ − s_b) of the same deterministic scores
    assert f["theta"] == {"answer_prob": 1.0, "log_likelihood": 1.0}
    assert f["base"] == {"answer_prob": 0.0, "log_likelihood": 0.0}
    assert f["scores"]["theta"]["answer_prob"] > f["scores"]["base"]["answer_prob"]
    # a round's figure is its most telling copy
    per_copy = f["copies_as_published"]
    assert len(per_copy) == 2
    assert f["one_copy"]["answer_prob"] == max(c["answer_prob"] for c in per_copy)
    # ρ = 0: all copies with the base rebuild θ up to the alignment's error (a clone, L ≈ 1);
    # κ = 0.1 copies are within a few tenths of θ on its own data
    assert f["all_copies_with_base"]["answer_prob"] == pytest.approx(1.0, abs=0.1)
    assert 0.5 < f["one_copy"]["answer_prob"] <= 1.1
    assert "functional leakage" in markdown(result)
    assert (tmp_path / "leakage.json").is_file()


def test_knowledge_is_a_data_folder_s_full_split_or_a_split_folder(tofu_world):
    data, _ = tofu_world
    where, rows = knowledge_rows(data, 25)
    assert where.endswith("full") and len(rows) == 25
    full = list(load_split(data, "full"))
    # spread evenly over the split, first and last row included
    assert rows[0] == full[0] and rows[-1] == full[-1]
    where, rows = knowledge_rows(f"{data}/forget01", 0)
    assert where.endswith("forget01") and len(rows) == len(load_split(data, "forget01"))


def test_calibrated_membership_is_chance_on_a_random_update(tofu_world, round1):
    """An update that knows nothing of the forget set: a random one with the real update's
    per-tensor norms. The raw loss-rise test can still separate memorised items (they sit in
    sharper minima); the calibrated one must not. 100 trained items against 400 unseen ones:
    the null AUC's standard deviation is √((n₁+n₂+1)/(12 n₁ n₂)) = 0.032; bound: 4 of them."""
    data, _ = tofu_world
    server, _, _ = round1
    before = Checkpoint(round_dir(server.workdir, 1))
    after = Checkpoint(round_dir(server.workdir, 2))
    theta = load(before, before.names())
    real = {n: t - theta[n] for n, t in load(after, after.names()).items()}
    trained = list(load_split(data, "forget01")) + list(load_split(data, "retain99"))[:60]
    unseen = list(load_split(data, "holdout10"))
    member, non_member = encode_rows(before.path, trained), encode_rows(before.path, unseen)
    fake = random_like(real, seed=1234)
    for name in real:
        assert float(fake[name].norm()) == pytest.approx(float(real[name].norm()), rel=1e-5)
    res = calibrated_membership(before.path, theta, fake, member, non_member, draws=4)
    sd = math.sqrt((100 + 400 + 1) / (12 * 100 * 400))
    assert abs(res["calibrated"] - 0.5) < 4 * sd  # measured 0.536
    # the raw test calls the same random update a membership signal (measured 0.609, 3.4 sd)
    assert res["raw"] > 0.5 + 2 * sd
    assert res["items"] == [100, 400]
