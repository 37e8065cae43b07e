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
    assert "all 2 blocks, the embedding and the head on 2 × 32 tokens" in line
    assert "(≤ 1e-05)" in line


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


def _deep_llama(layers: int):
    config = family_configs()["llama"]
    config.num_hidden_layers = layers
    return config


@pytest.mark.slow
def test_gate_runs_the_leading_blocks_and_still_catches_a_wrong_row(tmp_path, monkeypatch, capsys):
    """On a 5-block model the gate runs blocks 1–2 (every block is mapped by the same adapter
    rows), says so, and refuses a wrong row there; gate_blocks=0 runs all five."""
    from mpu.cli import main

    model, base = build_pair(_deep_llama(5), tmp_path / "m")
    argv = ["server", "init", "--model", str(model), "--base", str(base)]
    assert main([*argv, "--workdir", str(tmp_path / "w")]) == 0
    assert "through blocks 1–2 of 5 (every block uses the same maps)" in capsys.readouterr().out
    assert main([*argv, "--workdir", str(tmp_path / "all"), "gate_blocks=0"]) == 0
    assert "through all 5 blocks" in capsys.readouterr().out

    right = gate.transform
    seen = set()

    def wrong(t, role, geometry, block):
        seen.add(id(block))
        out = right(t, role, geometry, block)
        return out * 1.01 if role is Role.O else out

    monkeypatch.setattr(gate, "transform", wrong)
    with pytest.raises(CheckpointError, match="refusing to publish"):
        Server.init(model, base, tmp_path / "w2", JobConfig(copies=2, kappa=0.01))
    assert len(seen) == 2  # two blocks' maps were applied, not five


def test_gate_depth_covers_every_layer_type():
    from types import SimpleNamespace

    plain = SimpleNamespace(num_hidden_layers=30)
    assert gate.gate_depth(plain, 2) == 2
    assert gate.gate_depth(plain, 0) == 30
    assert gate.gate_depth(SimpleNamespace(num_hidden_layers=1), 2) == 1
    pattern = ["sliding_attention"] * 5 + ["full_attention"]
    mixed = SimpleNamespace(num_hidden_layers=12, layer_types=pattern * 2)
    assert gate.gate_depth(mixed, 2) == 6  # the first full-attention layer is the 6th


def test_gate_blocks_must_be_a_count():
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(Exception, match="gate_blocks"):
            JobConfig(gate_blocks=bad)
