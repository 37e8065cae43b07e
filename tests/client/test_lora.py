"""LoRA clients, gradient checkpointing, devices and reference placement (issue 17).

The merged LoRA copy may differ from the published copy only in the adapted projections, by a
matrix of rank ≤ r (plus the fp32 rounding of the merge and of the difference); the delta goes
through the server's unchanged Post-Process; checkpointing changes memory, not results.
"""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

from mpu.client.train_config import ClientTrainConfig
from mpu.client.trainer import train_unlearning
from mpu.client.unlearn import load_client_data, unlearn_copy
from mpu.errors import ConfigError
from toolkit import publish_job

U = 2.0**-24  # unit roundoff of fp32
FAST = dict(
    lr=1e-3, batch_size=4, grad_accum=1, precision="fp32", schedule="constant",
    warmup_epochs=0.0, epochs=2, device="cpu",
)  # fmt: skip
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _run(target, tok, rows, **kw):
    model = copy.deepcopy(target)
    cfg = ClientTrainConfig(**{"method": "NPO", **FAST, **kw})
    result = train_unlearning(model, tok, rows[:8], rows[8:], cfg, progress=False)
    return model, result


def _rounding_bound(before: torch.Tensor, after: torch.Tensor) -> float:
    """Frobenius bound on what fp32 adds to an exact rank-r update: the merge rounds W + s·BA
    (≤ u·|W'| per entry) and the delta W' − W rounds once more (≤ u·|Δ|): 3u·max|W|·√(mn)."""
    return 3 * U * float(torch.maximum(before.abs(), after.abs()).max()) * before.numel() ** 0.5


def test_lora_changes_only_the_adapted_projections_by_rank_r(target, tok, rows):
    before = {k: v.clone() for k, v in target.state_dict().items()}
    model, result = _run(target, tok, rows, trainable="lora", **{"lora": {"rank": 4}})
    assert type(model).__name__ == "LlamaForCausalLM"  # merged, no PEFT wrapper left
    after = model.state_dict()
    assert after.keys() == before.keys()
    adapted = [k for k in before if k.endswith("proj.weight")]
    assert len(adapted) == len(TARGETS) * 2  # two blocks
    for name in before:
        delta = after[name] - before[name]
        if name not in adapted:
            assert torch.equal(delta, torch.zeros_like(delta)), name
            continue
        sigma = torch.linalg.svdvals(delta.double())
        assert sigma[0] > 0, f"{name}: the adapter did not move"
        assert float(sigma[4:].norm()) <= _rounding_bound(before[name], after[name]), name
    assert result.logs["trainable_parameters"] < sum(p.numel() for p in model.parameters()) / 4
    assert result.logs["forget_loss"]["after"] > result.logs["forget_loss"]["before"]


def test_gradient_checkpointing_trains_the_adapters_and_changes_no_number(target, tok, rows):
    """Re-entrant checkpointing with frozen embeddings gives adapters no gradient unless the
    embedding output requires grad (the PEFT pitfall); with it, the run is the same run."""
    plain, _ = _run(target, tok, rows, trainable="lora")
    ckpt, result = _run(target, tok, rows, trainable="lora", gradient_checkpointing=True)
    start = target.state_dict()
    for name, value in ckpt.state_dict().items():
        if name.endswith("proj.weight"):
            assert not torch.equal(value, start[name]), f"{name}: adapters untouched"
        assert torch.equal(value, plain.state_dict()[name]), name
    assert not ckpt.is_activation_checkpointing  # switched off again after the run
    assert result.logs["lora_targets"] == sorted(f"{p}.{t}" for p, t in (
        ("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"),
        ("self_attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"),
    ))  # fmt: skip


def test_full_fine_tuning_with_checkpointing_is_the_same_run(target, tok, rows):
    plain, _ = _run(target, tok, rows, method="GradDiff", trainable="decoder")
    ckpt, _ = _run(
        target, tok, rows, method="GradDiff", trainable="decoder", gradient_checkpointing=True
    )
    for name, value in ckpt.state_dict().items():
        assert torch.equal(value, plain.state_dict()[name]), name


def test_adapters_off_reference_is_the_starting_copy(target, tok, rows):
    """NPO's reference for a LoRA client is the network with adapters off (no second copy);
    it must give the run a deep-copied reference gives (reference_device=cpu forces the copy)."""
    shared, _ = _run(target, tok, rows, trainable="lora")
    copied, _ = _run(target, tok, rows, trainable="lora", reference_device="cpu")
    for name, value in shared.state_dict().items():
        assert torch.allclose(value, copied.state_dict()[name], rtol=0, atol=1e-6), name


def test_bf16_reference_trains_and_stays_close(target, tok, rows):
    full, _ = _run(target, tok, rows)
    half, result = _run(target, tok, rows, reference_precision="bf16")
    assert result.logs["forget_loss"]["after"] > result.logs["forget_loss"]["before"]
    moved = sum(float((v - target.state_dict()[k]).norm()) for k, v in full.state_dict().items())
    apart = sum(float((v - full.state_dict()[k]).norm()) for k, v in half.state_dict().items())
    assert 0 < apart < 0.5 * moved  # bf16 log-probs of the reference: a nearby run, not the same


def test_rmu_with_lora_steers_through_the_base_blocks(target, tok, rows):
    model, result = _run(target, tok, rows, method="RMU", trainable="lora")
    assert result.step_count > 0
    assert any(not torch.equal(v, target.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lora": {"rank": 0}}, "lora.rank"),
        ({"lora": {"dropout": 1.0}}, "lora.dropout"),
        ({"device": "gpu"}, "device='gpu'"),
        ({"reference_device": "disk"}, "reference_device"),
    ],
)
def test_bad_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        ClientTrainConfig(method="NPO", **overrides)


def test_missing_lora_target_is_refused_before_training(target, tok, rows):
    with pytest.raises(ConfigError, match="no module named c_attn"):
        _run(target, tok, rows, trainable="lora", lora={"target_modules": ["c_attn"]})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's message")
def test_asking_for_a_gpu_without_one_says_so(target, tok, rows):
    with pytest.raises(ConfigError, match="no CUDA device"):
        _run(target, tok, rows, device="cuda")


def test_the_same_cpu_run_twice_gives_bit_identical_deltas(tofu_world, tmp_path):
    data, _ = tofu_world
    _, copies = publish_job(tofu_world, tmp_path, copies=1)
    cfg = ClientTrainConfig(method="NPO", epochs=1, batch_size=4, lr=1e-3, device="cpu")
    client = load_client_data(data, "forget01", cfg)
    a, b = (
        load_file(unlearn_copy(copies[0], client, cfg, tmp_path / n, progress=False)[1])
        for n in ("a", "b")
    )
    assert a.keys() == b.keys()
    assert any(float(t.abs().max()) > 0 for t in a.values())
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_lora_deltas_aggregate(tofu_world, tmp_path):
    """Two LoRA copies' dense deltas go through the server's Post-Process unchanged."""
    data, models = tofu_world
    server, copies = publish_job(tofu_world, tmp_path, copies=2)
    cfg = ClientTrainConfig(method="GradDiff", epochs=2, trainable="lora", device="cpu")
    client = load_client_data(data, "forget01", cfg)
    runs = [
        unlearn_copy(c, client, cfg, tmp_path / f"c{i}", order_seed=1, progress=False)
        for i, c in enumerate(copies)
    ]
    # the default lr for adapters (10× full fine-tuning's) moves the model
    assert all(info["no_effect"] is None for *_, info in runs)
    assert runs[0][2]["effective_config"]["lr"] == 10 * 5e-4  # small-model rule × LoRA factor
    deltas = [delta for _, delta, _ in runs]
    server.aggregate(deltas, progress=False)
    start = load_file(models / "target" / "model.safetensors")
    theta = server.theta()
    moved = [k for k in start if not torch.equal(start[k], theta.read(k))]
    assert moved and all(k.endswith("proj.weight") for k in moved)
