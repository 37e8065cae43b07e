"""`server init`'s function-preservation gate: passes a correct adapter on every family, and
refuses (naming the error, leaving no workdir) when the maps change the logits."""

import logging

import pytest

import mpu.server.gate as gate
from mpu.arch.base import Role
from mpu.errors import CheckpointError
from mpu.server.config import JobConfig
from mpu.server.job import Server
from toolkit import build_pair, family_configs


@pytest.mark.parametrize("family", sorted(family_configs()))
def test_gate_passes_a_correct_adapter_and_says_what_it_checked(family, tmp_path, caplog):
    model, base = build_pair(family_configs()[family], tmp_path)
    with caplog.at_level(logging.INFO, logger="mpu.server"):
        Server.init(model, base, tmp_path / "w", JobConfig(copies=2, kappa=0.01))
    (line,) = [r.getMessage() for r in caplog.records if "gate passed" in r.getMessage()]
    assert "2 sequences × " in line and "(≤ 1e-5)" in line


def test_gate_refuses_maps_that_change_the_logits(tmp_path, monkeypatch):
    model, base = build_pair(family_configs()["llama"], tmp_path)
    right = gate.transform

    def wrong(t, role, geometry, block):  # a 1 % error in one role: what a wrong adapter row does
        out = right(t, role, geometry, block)
        return out * 1.01 if role is Role.O else out

    monkeypatch.setattr(gate, "transform", wrong)
    with pytest.raises(CheckpointError, match=r"changes the logits by .* refusing to publish"):
        Server.init(model, base, tmp_path / "w", JobConfig(copies=2, kappa=0.01))
    assert not (tmp_path / "w").exists()
