"""Registry lookups, strict hyperparameters, profile values (docs/methods.md) and (R, E)."""

from __future__ import annotations

import dataclasses

import pytest

from mpu.errors import ConfigError
from mpu.methods import (
    METHODS,
    build_method_config,
    get_method,
    rounds_and_epochs,
    training_defaults,
)

CANONICAL = [
    "GradAscent",
    "GradDiff",
    "NPO",
    "SimNPO",
    "DPO",
    "UNDIAL",
    "SatImp",
    "WGA",
    "RMU",
    "CE-U",
    "PDU",
    "AltPO",
    "Distill",
]


def test_registry_names_and_aliases():
    assert list(METHODS) == CANONICAL
    for alias, name in [
        ("idkdpo", "DPO"),
        ("UnDIAL", "UNDIAL"),
        ("ceu", "CE-U"),
        ("simnpo", "SimNPO"),
        ("GRADASCENT", "GradAscent"),
    ]:
        assert get_method(alias).name == name


def test_unknown_method_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown unlearning method 'NPOO'.*SimNPO.*CE-U"):
        get_method("NPOO")


@pytest.mark.parametrize(
    ("name", "override", "msg"),
    [
        ("NPO", ["betta=0.2"], "betta"),
        ("NPO", ["beta=0"], "beta=0"),
        ("SimNPO", {"retain_loss_type": "MSE"}, "retain_loss_type"),
        ("UNDIAL", ["undial_mask=prompt"], "undial_mask"),
        ("RMU", ["retain_loss_type=NLL"], "EMBED_DIFF"),
        ("GradAscent", ["alpha=1"], "alpha"),
        ("CE-U", ["ignore_first_n_answer_tokens=-1"], "ignore_first_n_answer_tokens"),
        ("PDU", [], "retain_loss_eps"),
        ("PDU", ["retain_loss_eps=0.3", "dual_update_upon=epoch"], "dual_update_upon"),
    ],
)
def test_bad_hyperparameters_raise(name, override, msg):
    with pytest.raises(ConfigError, match=msg):
        build_method_config(name, overrides=override)


def test_unknown_profile():
    with pytest.raises(ConfigError, match="profile 'stock'"):
        build_method_config("NPO", "stock")


# docs/methods.md: (paper, openunlearning) values that must be reproduced.
PROFILE_TABLE = {
    "GradDiff": ({"gamma": 1.0, "alpha": 1.0, "retain_loss_type": "NLL"},) * 2,
    "NPO": ({"beta": 0.1, "gamma": 1.0, "alpha": 1.0},) * 2,
    "SimNPO": (
        {"beta": 4.5, "delta": 0.0, "gamma": 1.0, "alpha": 1.0},
        {"beta": 4.5, "delta": 0.0, "gamma": 0.125, "alpha": 1.0},
    ),
    "DPO": ({"beta": 0.1, "gamma": 1.0, "alpha": 1.0},) * 2,
    "UNDIAL": (
        {"beta": 10.0, "gamma": 1.0, "alpha": 1.0, "undial_mask": "answer"},
        {"beta": 10.0, "gamma": 1.0, "alpha": 0.0, "undial_mask": "all"},
    ),
    "SatImp": (
        {"beta1": 5.0, "beta2": 1.0, "gamma": 1.0, "alpha": 1.0},
        {"beta1": 5.0, "beta2": 1.0, "gamma": 0.1, "alpha": 1.0},
    ),
    "WGA": ({"beta": 1.0, "gamma": 1.0, "alpha": 1.0},) * 2,
    "RMU": ({"steering_coeff": 2.0, "layer": None},) * 2,
    "CE-U": ({"ignore_first_n_answer_tokens": 1},) * 2,
}


@pytest.mark.parametrize("name", list(PROFILE_TABLE))
def test_profile_hyperparameters(name):
    for profile, expected in zip(("paper", "openunlearning"), PROFILE_TABLE[name], strict=True):
        got = dataclasses.asdict(build_method_config(name, profile))
        assert {k: got[k] for k in expected} == expected, (name, profile)


def test_override_beats_profile():
    assert build_method_config("SimNPO", "paper", ["gamma=0.5"]).gamma == 0.5


def test_training_defaults_per_profile():
    paper, ou = training_defaults("paper"), training_defaults("openunlearning")
    assert (paper["schedule"], paper["accumulation"], paper["precision"]) == (
        "constant",
        "epoch_flush",
        "pure_bf16",
    )
    assert paper["decay_norms_and_biases"] and not ou["decay_norms_and_biases"]
    assert (ou["schedule"], ou["warmup_epochs"], ou["accumulation"], ou["precision"]) == (
        "linear",
        1.0,
        "hf",
        "bf16_weights",
    )
    for d in (paper, ou):
        assert (
            d["lr"],
            d["weight_decay"],
            d["batch_size"],
            d["grad_accum"],
            d["max_grad_norm"],
        ) == (1e-5, 0.01, 8, 4, 1.0)
    wmdp = training_defaults("openunlearning", "wmdp")
    assert (wmdp["lr"], wmdp["max_steps"], wmdp["batch_size"], wmdp["grad_accum"]) == (
        5e-5,
        80,
        1,
        16,
    )


def test_rounds_and_epochs_table():
    assert rounds_and_epochs("SimNPO") == (10, 1)
    assert rounds_and_epochs("IdkDPO") == (10, 1)
    assert rounds_and_epochs("npo") == (2, 5)
    assert rounds_and_epochs("GradDiff") == (1, 10)
    assert rounds_and_epochs("RMU") == (1, 10)  # fallback
    assert all(m.rounds_epochs[0] * m.rounds_epochs[1] == 10 for m in METHODS.values())
    with pytest.raises(ConfigError):
        rounds_and_epochs("PDU2")


def test_reference_and_data_needs():
    assert {n for n, s in METHODS.items() if s.needs_reference} == {
        "NPO", "DPO", "UNDIAL", "RMU", "AltPO", "Distill"
    }  # fmt: skip
    assert {n for n, s in METHODS.items() if s.needs_alternates} == {"AltPO"}
    assert {n for n, s in METHODS.items() if s.needs_idk} == {"DPO"}
    assert not METHODS["GradAscent"].needs_retain and not METHODS["CE-U"].needs_retain
    gd = get_method("GradDiff")
    assert not gd.uses_reference(build_method_config("GradDiff"))
    assert gd.uses_reference(build_method_config("GradDiff", overrides=["retain_loss_type=KL"]))
    undial = get_method("UNDIAL")
    assert not undial.uses_retain(build_method_config("UNDIAL"))  # α = 0 stock
    assert undial.uses_retain(build_method_config("UNDIAL", "paper"))


def test_every_method_key_is_a_typed_hparams_setting():
    """`hparams.KEY=…` reaches every method's hyperparameters through the config loader."""
    from mpu.client.train_config import MethodHParams

    known = {f.name for f in dataclasses.fields(MethodHParams)}
    for name, spec in METHODS.items():
        missing = {f.name for f in dataclasses.fields(spec.config_cls)} - known
        assert not missing, (name, missing)
