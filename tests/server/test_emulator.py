"""Emulator mode (`server.emulator=layer_drop`): copies with the first and last blocks as MPU
copies and every n-th middle block, the client training the outer blocks only, the server
applying them to θ's outer blocks. Stride 1 keeps every block and must be ordinary MPU, bit
for bit; both are compared under the public paper seeds so that two jobs draw the same noise."""

from __future__ import annotations

import json

import pytest
import torch

from mpu.errors import CheckpointError, ConfigError, UpdateRejectedError
from mpu.io.checkpoint import Checkpoint
from mpu.server.config import JobConfig
from mpu.server.job import Server
from mpu.server.state import round_dir
from toolkit import finetune, tiny_llama, tiny_tokenizer, unlearn_copies

pytestmark = pytest.mark.slow
LAYERS = 6


@pytest.fixture(scope="module")
def six_blocks(tofu_world, tmp_path_factory):
    """Base and target of a 6-block tiny Llama (the target memorises forget01)."""
    from mpu.data import load_split

    data, _ = tofu_world
    root = tmp_path_factory.mktemp("six-blocks")
    rows = [dict(r) for r in load_split(data, "forget01")]
    tok = tiny_tokenizer(vocab_size=400, corpus=[f"{r['question']} {r['answer']}" for r in rows])
    base = tiny_llama(tok, seed=0, layers=LAYERS, hidden=32)
    base.save_pretrained(root / "base")
    finetune(base, tok, rows, steps=30, lr=3e-3)
    base.save_pretrained(root / "target")
    for name in ("base", "target"):
        tok.save_pretrained(root / name)
    return data, root


def _job(six_blocks, root, **settings):
    _, models = six_blocks
    cfg = JobConfig(**{"kappa": 0.1, "copies": 2, "gate": False, "seeds": "paper_public",
                       **settings})  # fmt: skip
    server = Server.init(models / "target", models / "base", root / "server", cfg)
    return server, server.publish(root / "outbox", progress=False)


def _tensors(folder) -> dict[str, torch.Tensor]:
    ck = Checkpoint(folder)
    return {n: ck.read(n) for n in ck.names()}


def test_an_emulator_that_keeps_every_block_is_ordinary_mpu_bit_for_bit(six_blocks, tmp_path):
    data, _ = six_blocks
    world = (data, None)
    results = {}
    for name, settings in (
        ("plain", {}),
        ("stride1", {"emulator": "layer_drop", "emulator_stride": 1}),
    ):
        server, copies = _job(six_blocks, tmp_path / name, **settings)
        k_of = {r.folder: r.k for r in server.state.copy_records(1)}  # folders are shuffled
        for c in copies:  # the same copies (by noise index): weights and config, byte for byte
            results.setdefault(f"copy k={k_of[c.name]}", []).append(
                ((c / "model.safetensors").read_bytes(), (c / "config.json").read_bytes())
            )
        deltas = unlearn_copies(world, copies, tmp_path / name)
        stats = server.aggregate(deltas, progress=False)
        results.setdefault("result", []).append(stats["commitments"]["result"])
    for key, (a, b) in results.items():
        assert a == b, f"{key} differs between ordinary MPU and a stride-1 emulator"


def test_layer_drop_publishes_a_shorter_copy_and_updates_only_the_outer_blocks(
    six_blocks, tmp_path
):
    data, _ = six_blocks
    server, copies = _job(six_blocks, tmp_path / "emu", emulator="layer_drop", emulator_outer=1,
                          emulator_stride=2)  # fmt: skip
    plain_server, plain = _job(six_blocks, tmp_path / "plain")
    config = json.loads((copies[0] / "config.json").read_text())
    # middle blocks 1..4, every second kept: θ's blocks 0, 1, 3, 5 become the copy's 0..3
    assert config["num_hidden_layers"] == 4
    assert config["mpu_emulator"] == {"theta_blocks": 6, "kept_blocks": [0, 1, 3, 5],
                                      "trainable_blocks": [0, 3]}  # fmt: skip
    # the kept blocks are ordinary MPU blocks: the same bytes as the full copy's of the same
    # noise index (same public seeds; the folder → index assignment is shuffled per job)
    k_emu = {r.k: r.folder for r in server.state.copy_records(1)}
    k_plain = {r.folder: r.k for r in plain_server.state.copy_records(1)}
    match = next(c for c in copies if c.name == k_emu[k_plain[plain[0].name]])
    emu, full = _tensors(match), _tensors(plain[0])
    for theta_block, copy_block in ((0, 0), (1, 1), (3, 2), (5, 3)):
        for name, t in full.items():
            if name.startswith(f"model.layers.{theta_block}."):
                moved = name.replace(f"layers.{theta_block}.", f"layers.{copy_block}.", 1)
                assert torch.equal(emu[moved], t), moved
    assert not any(n.startswith(("model.layers.4.", "model.layers.5.")) for n in emu)
    # the client trains the outer blocks only; the server moves only θ's outer blocks
    deltas = unlearn_copies((data, None), copies, tmp_path / "emu")
    for d in deltas:
        from mpu.io.delta import DeltaFile

        delta = DeltaFile(d)
        for name in delta.specs:
            if name.startswith(("model.layers.1.", "model.layers.2.")):
                assert not delta.read(name).any(), f"emulator block {name} was trained"
    server.aggregate(deltas, progress=False)
    # the signed transcript replays: each update's logged commitment is its file's, though
    # the server read it in θ's names with zeros for the blocks the copy lacks
    from mpu.server.audit_log import verify

    assert verify(server.workdir)["rounds_replayed"] == 1
    before, after = _tensors(round_dir(server.workdir, 1)), _tensors(round_dir(server.workdir, 2))
    for name in before:
        moved = not torch.equal(before[name], after[name])
        block = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        if block in (1, 2, 3, 4):
            assert not moved, f"{name} is in the middle: it must not change"
    assert any(
        not torch.equal(before[n], after[n]) for n in before if n.startswith("model.layers.0.")
    )
    assert any(
        not torch.equal(before[n], after[n]) for n in before if n.startswith("model.layers.5.")
    )


def test_base_middle_publishes_the_base_s_middle_and_updates_theta_s_outer_blocks(
    six_blocks, tmp_path
):
    """Without noise or maps a copy is exactly its source: θ's outer blocks and the tensors
    outside the blocks, the base's middle blocks. The client trains the outer blocks only, and
    the server applies them to θ, whose own middle stays θ's."""
    data, models = six_blocks
    server, copies = _job(six_blocks, tmp_path / "emu", emulator="base_middle", emulator_outer=1,
                          kappa=0.0, reparameterize=False)  # fmt: skip
    theta, base = _tensors(models / "target"), _tensors(models / "base")
    config = json.loads((copies[0] / "config.json").read_text())
    assert config["num_hidden_layers"] == LAYERS
    assert config["mpu_emulator"] == {"theta_blocks": 6, "kept_blocks": list(range(6)),
                                      "trainable_blocks": [0, 5], "middle": "base"}  # fmt: skip
    middle = ("model.layers.1.", "model.layers.2.", "model.layers.3.", "model.layers.4.")
    for c in copies:
        for name, t in _tensors(c).items():
            want = base[name] if name.startswith(middle) else theta[name]
            assert torch.equal(t, want), f"{c.name}: {name}"
    deltas = unlearn_copies((data, None), copies, tmp_path / "emu")
    server.aggregate(deltas, progress=False)
    from mpu.server.audit_log import verify

    assert verify(server.workdir)["rounds_replayed"] == 1
    after = _tensors(round_dir(server.workdir, 2))
    for name, t in theta.items():
        if name.startswith(middle):
            assert torch.equal(after[name], t), f"{name}: θ's middle must stay θ's"
    for outer in ("model.layers.0.", "model.layers.5."):
        assert any(not torch.equal(after[n], theta[n]) for n in theta if n.startswith(outer))
    # the next round publishes the base's middle again, beside θ_2's outer blocks
    nxt = server.publish(tmp_path / "outbox2", progress=False)
    for name, t in _tensors(nxt[0]).items():
        assert torch.equal(t, base[name] if name.startswith(middle) else after[name]), name


def test_an_update_that_does_not_fit_the_emulator_copy_is_refused(six_blocks, tmp_path):
    from safetensors.torch import load_file, save_file

    data, _ = six_blocks
    server, copies = _job(six_blocks, tmp_path, emulator="layer_drop", emulator_outer=1)
    deltas = unlearn_copies((data, None), copies, tmp_path)
    path = deltas[0]
    tensors = load_file(str(path))
    metadata = __import__("safetensors").safe_open(str(path), "pt").metadata()
    tensors["model.layers.5.mlp.up_proj.weight"] = tensors[
        "model.layers.0.mlp.up_proj.weight"
    ].clone()
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(UpdateRejectedError, match=r"unknown tensor 'model\.layers\.5\."):
        server.aggregate(deltas, progress=False)


def test_init_refuses_an_emulator_the_model_cannot_hold(six_blocks, tmp_path):
    with pytest.raises(ConfigError, match="6 blocks, fewer than the 8 outer blocks"):
        _job(six_blocks, tmp_path, emulator="layer_drop", emulator_outer=4)
    with pytest.raises(ConfigError, match="emulator must be one of"):
        JobConfig(emulator="distill")


def test_the_audit_measures_an_emulator_copy_like_any_other(six_blocks, tmp_path):
    """The client runs the emulator copy as published; the blocks it lacks are the base's in
    every reconstruction, so even all copies together stay short of θ's knowledge."""
    from mpu.server.leakage import audit

    data, _ = six_blocks
    knowledge = f"{data}/forget01"
    found = {}
    for name, settings in (("plain", {}), ("emu", {"emulator": "layer_drop", "emulator_outer": 1})):
        server, copies = _job(six_blocks, tmp_path / name, **settings)
        found[name] = audit(server.workdir, copies_dir=copies[0].parent, knowledge=knowledge)
    plain, emu = found["plain"]["functional"], found["emu"]["functional"]
    assert emu["theta"]["answer_prob"] == 1.0 and emu["base"]["answer_prob"] == 0.0
    assert emu["one_copy"]["answer_prob"] < plain["one_copy"]["answer_prob"]
    assert emu["all_copies_with_base"]["answer_prob"] < plain["all_copies_with_base"]["answer_prob"]
    # the client's two ways to run all copies: gaps filled with the base's blocks, or the
    # copies' own depth; the round's figure is the better of the two
    filled, short = emu["all_copies_base_filled"], emu["all_copies_at_emulator_depth"]
    for key in ("answer_prob", "log_likelihood"):
        assert emu["all_copies_with_base"][key] == max(filled[key], short[key])
    assert "all_copies_at_emulator_depth" not in plain
    # the weight-space audit still reads the copies right where they hold θ's blocks
    assert found["emu"]["client_view"]["exact_with_secrets"] < 1e-6


def _kl_to_theta(model_dir, student, ids) -> float:
    """Mean KL(θ ‖ student) per position on `ids`."""
    import torch.nn.functional as F

    from mpu.server.leakage.models import model_with

    with torch.no_grad():
        target = F.log_softmax(model_with(model_dir)(input_ids=ids).logits, -1)
        logp = F.log_softmax(student(input_ids=ids).logits, -1)
    return float(F.kl_div(logp, target, log_target=True, reduction="none").sum(-1).mean())


def test_a_distilled_emulator_is_nearer_theta_and_leaves_the_adapter_alone(six_blocks, tmp_path):
    """The server trains only the kept middle blocks towards θ before publishing: a noise-free,
    unmapped copy then holds θ's outer blocks bit for bit, the distilled middle (the file
    whose hash the job recorded), and computes θ's function more closely than the thinned
    model it started from; the audit still undoes the copies exactly."""
    from transformers import AutoModelForCausalLM

    from mpu.server.distill import distilled_path
    from mpu.server.leakage import audit

    _, models = six_blocks
    settings = {"emulator": "layer_drop", "emulator_outer": 1, "emulator_drop": 2}
    copies = {}
    for name, extra in (("thin", {}), ("distilled", {"emulator_distill_steps": 40,
                        "emulator_distill_texts": 16, "emulator_distill_length": 12})):  # fmt: skip
        cfg = JobConfig(kappa=0, reparameterize=False, copies=2, gate=False, seeds="paper_public",
                        **settings, **extra)  # fmt: skip
        server = Server.init(models / "target", models / "base", tmp_path / name / "srv", cfg)
        copies[name] = server.publish(tmp_path / name / "outbox", progress=False)[0]
    event = next(h for h in server.state.history if h.get("event") == "distill")
    assert event["steps"] == 40 and event["kl_last"] < event["kl_first"]
    thin, distilled = _tensors(copies["thin"]), _tensors(copies["distilled"])
    stored = _tensors_of_file(distilled_path(server.workdir))
    kept = json.loads((copies["distilled"] / "config.json").read_text())["mpu_emulator"]
    assert kept["kept_blocks"] == [0, 1, 3, 5] and kept["trainable_blocks"] == [0, 3]
    for name, t in distilled.items():
        block = int(name.split(".")[2]) if name.startswith("model.layers.") else None
        if block in (1, 2):  # the emulator: θ's blocks 1 and 3, distilled
            theta_name = name.replace(f"layers.{block}.", f"layers.{kept['kept_blocks'][block]}.")
            assert torch.equal(t, stored[theta_name]), name
            assert not torch.equal(t, thin[name]), f"{name} was not distilled"
        else:  # the adapter and everything outside the blocks: θ's own
            assert torch.equal(t, thin[name]), name
    ids = torch.randint(3, 400, (4, 12), generator=torch.Generator().manual_seed(1))
    kl = {n: _kl_to_theta(models / "target", AutoModelForCausalLM.from_pretrained(str(c)), ids)
          for n, c in copies.items()}  # fmt: skip
    assert kl["distilled"] < kl["thin"], kl
    found = audit(server.workdir, copies_dir=copies["distilled"].parent)
    assert found["client_view"]["exact_with_secrets"] < 1e-6


def test_a_changed_distilled_emulator_is_refused_at_publication(six_blocks, tmp_path):
    from mpu.server.distill import distilled_path

    _, models = six_blocks
    cfg = JobConfig(kappa=0.1, copies=2, gate=False, seeds="paper_public", emulator="layer_drop",
                    emulator_outer=1, emulator_drop=2, emulator_distill_steps=2,
                    emulator_distill_texts=4, emulator_distill_length=8)  # fmt: skip
    server = Server.init(models / "target", models / "base", tmp_path / "srv", cfg)
    path = distilled_path(server.workdir)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"emulator/model\.safetensors: .*SHA-256"):
        server.publish(tmp_path / "outbox", progress=False)


def test_distillation_settings_that_cannot_work_are_refused(six_blocks, tmp_path):
    with pytest.raises(ConfigError, match="emulator=off"):
        JobConfig(emulator_distill_steps=10)
    with pytest.raises(ConfigError, match="set one of them"):
        JobConfig(emulator="layer_drop", emulator_drop=2, emulator_stride=3)
    with pytest.raises(ConfigError, match="4 middle blocks"):
        _job(six_blocks, tmp_path / "a", emulator="layer_drop", emulator_outer=1, emulator_drop=5)
    with pytest.raises(ConfigError, match="keeps every block"):
        _job(six_blocks, tmp_path / "b", emulator="layer_drop", emulator_stride=1,
             emulator_distill_steps=5)  # fmt: skip
    for bad in ({"emulator_drop": 2}, {"emulator_distill_steps": 5}):
        with pytest.raises(ConfigError, match="base_middle keeps every block"):
            JobConfig(emulator="base_middle", **bad)


def _tensors_of_file(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_a_distilled_middle_is_reused_only_for_the_same_theta_and_emulator(six_blocks, tmp_path):
    """Distillation is the expensive part of an emulator job; a later job on the same θ and
    emulator copies the earlier job's distilled middle (and its record) instead."""
    from mpu.server.distill import distilled_path

    _, models = six_blocks
    settings = {"kappa": 0, "reparameterize": False, "copies": 2, "gate": False,
                "seeds": "paper_public", "emulator": "layer_drop", "emulator_outer": 1}  # fmt: skip
    first = Server.init(models / "target", models / "base", tmp_path / "first",
                        JobConfig(**settings, emulator_drop=2, emulator_distill_steps=3,
                                  emulator_distill_texts=4, emulator_distill_length=8))  # fmt: skip
    again = Server.init(models / "target", models / "base", tmp_path / "again",
                        JobConfig(**settings, emulator_drop=2,
                                  emulator_distilled_from=str(first.workdir)))  # fmt: skip
    assert distilled_path(again.workdir).read_bytes() == distilled_path(first.workdir).read_bytes()
    copies = [s.publish(tmp_path / name / "outbox", progress=False)[0]
              for s, name in ((first, "first"), (again, "again"))]  # fmt: skip
    assert _tensors(copies[0]).keys() == _tensors(copies[1]).keys()
    for name, t in _tensors(copies[0]).items():
        assert torch.equal(t, _tensors(copies[1])[name]), name
    with pytest.raises(ConfigError, match="leaves out blocks"):  # another emulator
        Server.init(models / "target", models / "base", tmp_path / "other",
                    JobConfig(**settings, emulator_drop=1,
                              emulator_distilled_from=str(first.workdir)))  # fmt: skip
    with pytest.raises(ConfigError, match="another model"):  # another θ
        Server.init(models / "base", models / "base", tmp_path / "base",
                    JobConfig(**settings, emulator_drop=2,
                              emulator_distilled_from=str(first.workdir)))  # fmt: skip
    with pytest.raises(ConfigError, match="no distilled emulator there"):
        Server.init(models / "target", models / "base", tmp_path / "none",
                    JobConfig(**settings, emulator_drop=2,
                              emulator_distilled_from=str(tmp_path)))  # fmt: skip
    # a changed source is refused while it is copied, and no copy of it is left behind
    source = distilled_path(first.workdir)
    source.write_bytes(source.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError, match="not the file its record describes"):
        Server.init(models / "target", models / "base", tmp_path / "changed",
                    JobConfig(**settings, emulator_drop=2,
                              emulator_distilled_from=str(first.workdir)))  # fmt: skip
    assert not distilled_path(tmp_path / "changed").exists()
    assert not list(distilled_path(tmp_path / "changed").parent.glob(".*tmp*"))
