"""Client training loop: validation before training, determinism, accumulation, schedule,
reference policy, trainable scope, precision and SGD arithmetic (docs/methods.md, docs/protocol.md §6)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mpu.client.batches import encode_rows
from mpu.client.effect import no_effect
from mpu.client.frozen import ThreatModelWarning
from mpu.client.optim import build_optimizer, select_trainable
from mpu.client.plan import plan_steps, round_schedule, usable_items
from mpu.client.train_config import ClientTrainConfig
from mpu.client.trainer import train_unlearning
from mpu.config import load_config
from mpu.errors import ConfigError, DataError
from mpu.methods import build_method_config, get_method
from toolkit import (
    fmt_of,
    qa_batch,
    synthetic_qa,
    tiny_llama,
)

IDK = ["I don't know.", "No idea."]
FAST = dict(
    lr=1e-3,
    batch_size=4,
    grad_accum=1,
    precision="fp32",
    schedule="constant",
    warmup_epochs=0.0,
    epochs=1,
)


@pytest.fixture()
def model(target):
    return copy.deepcopy(target)


def state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def cfg(**kw):
    return ClientTrainConfig(**{**FAST, **kw})


# --- bad input fails before any forward pass ------------------------------------------------


def test_config_errors_at_construction():
    with pytest.raises(ConfigError, match="unknown unlearning method 'GradAscend'"):
        ClientTrainConfig(method="GradAscend")
    with pytest.raises(ConfigError, match="betta"):
        ClientTrainConfig(method="NPO", hparams={"betta": 0.2})
    with pytest.raises(ConfigError, match="optimizer='adam'"):
        ClientTrainConfig(optimizer="adam")
    with pytest.raises(ConfigError, match="lrr"):
        load_config(ClientTrainConfig, overrides=["lrr=1e-5"])
    with pytest.raises(ConfigError, match="beta"):
        load_config(ClientTrainConfig, overrides=["method=NPO", "hparams.beta=-1"])
    ok = load_config(ClientTrainConfig, overrides=["method=idkdpo", "hparams.beta=0.2"])
    assert ok.method == "DPO" and ok.method_config().beta == 0.2


@pytest.mark.parametrize(
    ("kw", "data", "err", "msg"),
    [
        ({"method": "GradAscent"}, {"forget": []}, DataError, "forget set is empty"),
        ({"method": "GradDiff"}, {"retain": None}, DataError, "retain set is empty"),
        ({"method": "NPO"}, {"forget": [{"question": "q"}]}, DataError, "'answer'"),
        ({"method": "GradAscent"}, {"forget": [{"prompt": "x"}]}, DataError, "question"),
        ({"method": "DPO"}, {"idk": None}, DataError, "IDK"),
        ({"method": "DPO"}, {"forget": [{"text": "a b c"}]}, DataError, "QA forget rows"),
        ({"method": "NPO", "reference": "clean"}, {}, ConfigError, "reference=clean"),
        ({"method": "RMU", "hparams": {"layer": 7}}, {}, ConfigError, "block 7 does not exist"),
        ({"method": "GradAscent", "trainable": "no_such_param"}, {}, ConfigError, "matches no"),
    ],
)
def test_bad_input_raises_before_training(model, tok, rows, kw, data, err, msg):
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    before = state(model)
    forget = data.get("forget", rows[:4])
    retain = data.get("retain", rows[8:])
    idk = data.get("idk", IDK)
    with pytest.raises(err, match=msg):
        train_unlearning(model, tok, forget, retain, cfg(**kw), idk_answers=idk, progress=False)
    assert calls == [] and same(before, state(model))


# --- determinism and the shared data order ----------------------------------------------------


@pytest.mark.slow
def test_same_seed_same_parameters_and_order(model, tok, rows):
    c = cfg(method="NPO", epochs=2)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    ra = train_unlearning(a, tok, rows[:8], rows[8:], c, order_seed=3, progress=False)
    rb = train_unlearning(b, tok, rows[:8], rows[8:], c, order_seed=3, progress=False)
    assert same(state(a), state(b))
    assert ra.logs["order_digest"] == rb.logs["order_digest"]
    other = copy.deepcopy(model)
    rc = train_unlearning(other, tok, rows[:8], rows[8:], c, order_seed=4, progress=False)
    assert rc.logs["order_digest"] != ra.logs["order_digest"]
    assert not same(state(a), state(other))


@pytest.mark.slow
def test_cpu_training_is_the_same_with_torchs_deterministic_switch_on(
    model, tok, rows, monkeypatch
):
    """The trainer sets torch's deterministic-algorithms switch on CUDA only: on CPU it would
    only route the embedding backward through a slower path with the same bits."""
    c = cfg(method="GradDiff", epochs=2)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    train_unlearning(a, tok, rows[:8], rows[8:], c, order_seed=3, progress=False)
    switch = torch.use_deterministic_algorithms
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda mode, warn_only=False: switch(True, warn_only=True))  # fmt: skip
    try:
        train_unlearning(b, tok, rows[:8], rows[8:], c, order_seed=3, progress=False)
    finally:
        switch(False)
    assert same(state(a), state(b))


@pytest.mark.slow
def test_order_shared_across_different_copies(model, tok, rows):
    """Two different starting models (two copies) with one order_seed see identical batches."""
    c = cfg(method="DPO")
    other = tiny_llama(tok, seed=5)
    r1 = train_unlearning(
        model, tok, rows[:8], rows[8:], c, idk_answers=IDK, order_seed=9, progress=False
    )
    r2 = train_unlearning(
        other, tok, rows[:8], rows[8:], c, idk_answers=IDK, order_seed=9, progress=False
    )
    assert r1.logs["order_digest"] == r2.logs["order_digest"]


# --- accumulation semantics (docs/methods.md, TOFU forget01: N=40, b=8, g=4, 10 epochs) ---------


@pytest.mark.parametrize(
    ("profile", "steps", "micro"), [("paper", 20, 50), ("openunlearning", 10, 40)]
)
@pytest.mark.slow
def test_accumulation_forget01_counts(tok, profile, steps, micro):
    forget = synthetic_qa(40, seed=1)
    c = ClientTrainConfig(method="GradAscent", profile=profile, precision="fp32", lr=1e-4)
    assert plan_steps(40, c.resolve()) == steps
    m = tiny_llama(tok, seed=0, hidden=16, layers=1)
    res = train_unlearning(m, tok, forget, None, c, progress=False)
    assert (res.step_count, res.logs["micro_batches"]) == (steps, micro)
    # HF counter runs across epochs (steps at micro-batches 4, 8, 12, ...): step 2 mixes the
    # last micro-batch of epoch 0 with three of epoch 1; paper flushes 4 + 1 per epoch
    ends = {"openunlearning": [0, 1, 2, 3], "paper": [0, 0, 1, 1]}[profile]
    assert [s["epoch"] for s in res.logs["steps"][:4]] == ends


# --- schedule ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_linear_warmup_schedule_and_round_continuation(model, tok, rows):
    base = dict(
        method="GradAscent",
        lr=1e-3,
        batch_size=2,
        grad_accum=2,
        precision="fp32",
        schedule="linear",
        warmup_epochs=1.0,
        accumulation="epoch_flush",
    )
    one = copy.deepcopy(model)
    full = train_unlearning(
        one, tok, rows[:8], None, ClientTrainConfig(**base, epochs=4), progress=False
    )
    lrs = [s["lr"] for s in full.logs["steps"]]
    total, warm = 8, 2  # 8 items / (2·2) = 2 steps per epoch; warm-up 1 epoch = 2 steps
    assert full.logs["warmup_steps"] == warm
    expect = [1e-3 * (s / warm if s < warm else (total - s) / (total - warm)) for s in range(8)]
    assert lrs == pytest.approx(expect)
    # two rounds of 2 epochs continuing one global schedule give the same LR trace
    parts = []
    per_round = ClientTrainConfig(**base, epochs=2).resolve()
    fmt = fmt_of(tok)
    plan = round_schedule(usable_items(tok, rows[:8], per_round, fmt), per_round, rounds=2)
    assert plan == [
        {"schedule_offset_steps": 0, "total_steps": 8},
        {"schedule_offset_steps": 4, "total_steps": 8},
    ]
    for r in range(2):
        c = per_round.replace(**plan[r])
        parts += [
            s["lr"]
            for s in train_unlearning(
                copy.deepcopy(model), tok, rows[:8], None, c, progress=False
            ).logs["steps"]
        ]
    assert parts == pytest.approx(expect)


def test_a_round_spent_in_the_warmups_first_step_is_not_called_a_failure(model, tok, rows):
    # forget01-sized: one step per round, warm-up 1 epoch = 1 step, so round 1's only step runs
    # at lr 0 (HF's warm-up starts there) and changes nothing; the later rounds train
    c = ClientTrainConfig(method="GradAscent", lr=1e-3, batch_size=2, grad_accum=2, epochs=1,
                          precision="fp32", schedule="linear", warmup_epochs=1.0)  # fmt: skip
    first = c.resolve().replace(schedule_offset_steps=0, total_steps=4)
    res = train_unlearning(copy.deepcopy(model), tok, rows[:4], None, first, progress=False)
    assert [s["lr"] for s in res.logs["steps"]] == [0.0]
    assert no_effect(res.logs, 0.0, first) is None
    # the same lr-0 step as the whole schedule is a run that changed nothing: said plainly
    alone = c.resolve().replace(max_steps=1)
    res = train_unlearning(copy.deepcopy(model), tok, rows[:4], None, alone, progress=False)
    assert "did not move the model" in no_effect(res.logs, 0.0, alone)
    # a round that is 1 of 10 steps is held to a tenth of the 1 % forget-loss change
    logs = {"forget_loss": {"before": 1.0, "after": 1.002}, "schedule_total_steps": 10,
            "steps": [{"step": 3, "lr": 1e-3}]}  # fmt: skip
    assert no_effect(logs, 1.0, first) is None
    assert "did not move" in no_effect({**logs, "schedule_total_steps": 1}, 1.0, first)


# --- reference policy ---------------------------------------------------------------------------


@pytest.mark.slow
def test_default_reference_is_frozen_starting_copy(model, tok, rows):
    c = cfg(method="NPO", hparams={"alpha": 0.0, "beta": 0.5}, batch_size=8)
    res = train_unlearning(model, tok, rows[:8], rows[8:], c, progress=False)
    first = res.logs["steps"][0]["forget_loss"]
    assert first == pytest.approx(2 / 0.5 * math.log(2), rel=1e-5)  # Δ = 0 at the start
    assert res.logs["reference"] == "copy"


@pytest.mark.slow
def test_kl_retain_uses_a_fixed_reference_not_the_current_model(model, tok, rows):
    """docs/protocol.md §10 B27: KL to a per-step copy of the current model is identically zero."""
    c = cfg(method="GradDiff", retain_loss="KL", epochs=3)
    res = train_unlearning(model, tok, rows[:8], rows[8:], c, progress=False)
    kl = [s["retain_loss"] for s in res.logs["steps"]]
    assert kl[0] == pytest.approx(0.0, abs=1e-6) and kl[-1] > 1e-3


@pytest.mark.slow
def test_clean_reference_warns_and_is_not_modified(model, tok, rows):
    clean = copy.deepcopy(model)
    before = state(clean)
    with pytest.warns(ThreatModelWarning, match="breaks the threat model"):
        train_unlearning(
            model,
            tok,
            rows[:8],
            rows[8:],
            cfg(method="NPO", reference="clean"),
            reference_model=clean,
            progress=False,
        )
    assert same(before, state(clean)) and not same(before, state(model))


# --- trainable scope, optimizer groups, precision -----------------------------------------------


@pytest.mark.slow
def test_decoder_scope_freezes_embeddings_and_head(model, tok, rows):
    before = state(model)
    train_unlearning(
        model, tok, rows[:8], None, cfg(method="GradAscent", trainable="decoder"), progress=False
    )
    after = state(model)
    for k in before:
        changed = not torch.equal(before[k], after[k])
        assert changed == (".layers." in k), k
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_regex_scope_and_no_decay_groups(model):
    named = select_trainable(model, r"mlp\.down_proj")
    assert named and all("down_proj" in n for n, _ in named)
    eff = ClientTrainConfig(profile="openunlearning").resolve()
    opt = build_optimizer(model, list(model.named_parameters()), eff)
    decay, no_decay = opt.param_groups
    norm_ids = {id(p) for n, p in model.named_parameters() if "norm" in n}
    assert {id(p) for p in no_decay["params"]} == norm_ids and no_decay["weight_decay"] == 0.0
    assert decay["weight_decay"] == 0.01
    paper = build_optimizer(
        model, list(model.named_parameters()), ClientTrainConfig(profile="paper").resolve()
    )
    assert len(paper.param_groups) == 1 and paper.param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("pure_bf16", torch.bfloat16),
        ("bf16_weights", torch.bfloat16),
        ("bf16-mixed", torch.float32),
    ],
)
@pytest.mark.slow
def test_precision_modes(model, tok, rows, precision, dtype):
    before = {k: v.to(dtype) for k, v in state(model).items()}
    res = train_unlearning(
        model, tok, rows[:8], rows[8:], cfg(method="GradDiff", precision=precision), progress=False
    )
    assert res.step_count == 2
    assert all(p.dtype == dtype for p in model.parameters())
    assert not same(before, state(model))


@pytest.mark.slow
def test_sgd_step_is_minus_lr_times_gradient(model, tok, rows):
    """One SGD step on one full batch equals θ − η∇L computed directly from the loss."""
    forget = rows[:4]
    ref_model = copy.deepcopy(model)
    spec = get_method("GradAscent")
    loss, _ = spec.loss(
        ref_model, {"forget": qa_batch(tok, forget)}, None, build_method_config("GradAscent")
    )
    loss.backward()
    expect = {n: p.detach() - 0.1 * p.grad for n, p in ref_model.named_parameters()}
    c = cfg(method="GradAscent", optimizer="sgd", lr=0.1, max_grad_norm=0.0, weight_decay=0.0)
    train_unlearning(model, tok, forget, None, c, progress=False)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expect[n], rtol=1e-5, atol=1e-7)


# --- text rows ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_text_rows_and_answerless_items_dropped(model, tok):
    texts = [
        {"text": "Xylo Braun was born in Qarvenn."},
        {"text": ""},
        {"text": "Mira Vetch writes gothic poetry."},
    ]
    kept, _, dropped = encode_rows(tok, texts, fmt=fmt_of(tok), max_length=64)
    assert (len(kept), dropped) == (2, 1)
    res = train_unlearning(
        model, tok, texts, None, cfg(method="GradAscent", batch_size=2), progress=False
    )
    assert res.logs["dropped_empty"]["forget"] == 1 and res.step_count == 1


def changed_fraction(a, b):
    n = sum(a[k].numel() for k in a)
    return sum(int((a[k] != b[k]).sum()) for k in a) / n


@pytest.mark.slow
def test_bf16_weights_drop_sub_ulp_updates_like_upstream(model, tok, rows):
    """bf16 weights + fp32 AdamW state (stock OpenUnlearning): a 1e-8 step rounds away
    except on weights within ~1e-6 of zero; fp32 weights keep it almost everywhere."""
    c = cfg(method="GradAscent", precision="bf16_weights", lr=1e-8)
    before = {k: v.to(torch.bfloat16) for k, v in state(model).items()}
    mixed = copy.deepcopy(model)
    train_unlearning(model, tok, rows[:8], None, c, progress=False)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert changed_fraction(before, state(model)) < 0.01
    ref = state(mixed)
    train_unlearning(mixed, tok, rows[:8], None, cfg(method="GradAscent", lr=1e-8), progress=False)
    assert changed_fraction(ref, state(mixed)) > 0.5


def _permute_ffn(m, perms, inverse=False):
    with torch.no_grad():
        for layer, p in zip(m.model.layers, perms, strict=True):
            q = torch.argsort(p) if inverse else p
            mlp = layer.mlp
            mlp.gate_proj.weight.copy_(mlp.gate_proj.weight[q])
            mlp.up_proj.weight.copy_(mlp.up_proj.weight[q])
            mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, q])


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.slow
def test_training_commutes_with_a_function_preserving_permutation(model, tok, rows, optimizer):
    """docs/protocol.md §4.2/§9: with the same order_seed, unlearning a permuted copy (reference = its
    own copy) and un-permuting equals unlearning the original — the loop adds no asymmetry."""
    gen = torch.Generator().manual_seed(0)
    perms = [
        torch.randperm(layer.mlp.gate_proj.out_features, generator=gen)
        for layer in model.model.layers
    ]
    other = copy.deepcopy(model)
    _permute_ffn(other, perms)
    c = cfg(
        method="NPO",
        optimizer=optimizer,
        epochs=2,
        batch_size=2,
        grad_accum=2,
        weight_decay=0.01,
        max_grad_norm=0.5,
    )
    train_unlearning(model, tok, rows[:8], rows[8:], c, order_seed=1, progress=False)
    train_unlearning(other, tok, rows[:8], rows[8:], c, order_seed=1, progress=False)
    _permute_ffn(other, perms, inverse=True)
    for (n, a), b in zip(model.named_parameters(), other.parameters(), strict=True):
        # Adam divides by sqrt(v): where a gradient entry is ~0 the fp32 round-off of the two
        # orders is amplified up to a fraction of one step (lr = 1e-3), hence atol = 1% of lr
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)


def test_distill_without_a_teacher_and_pdu_on_several_processes_are_refused(model, tok, rows):
    with pytest.raises(ConfigError, match="needs a teacher that never saw the forget set"):
        train_unlearning(model, tok, rows[:4], rows[4:8], cfg(method="Distill"))
    from unittest import mock

    from mpu.client import distributed

    two = mock.Mock(count=2)
    with (
        mock.patch.object(distributed, "current_processes", return_value=two),
        mock.patch("mpu.client.trainer.current_processes", return_value=two),
        pytest.raises(ConfigError, match="run it on one process"),
    ):
        train_unlearning(model, tok, rows[:4], rows[4:8],
                         cfg(method="PDU", hparams={"retain_loss_eps": 0.3}))  # fmt: skip
