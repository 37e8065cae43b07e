"""Method registry: name → loss function, config class and input needs (METHODS.md §4)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from mpu.config import load_config
from mpu.errors import ConfigError
from mpu.methods import configs as C
from mpu.methods import losses as L
from mpu.methods.profiles import PROFILES, paper_hparams
from mpu.methods.rmu import check_rmu_model, rmu_loss

LossFn = Callable[[torch.nn.Module, Any, Any, Any], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class MethodSpec:
    """What the client loop needs to know about one method.

    `needs_reference`: the loss itself reads a frozen reference/teacher model (a KL retain
    loss also needs one: see `uses_reference`). `needs_retain`: the batch carries a retain
    part. `needs_idk`: the batch carries an `alternate` refusal part (IdkDPO).
    """

    name: str
    loss: LossFn
    config_cls: type
    needs_reference: bool = False
    needs_retain: bool = False
    needs_idk: bool = False
    aliases: tuple[str, ...] = ()
    check_model: Callable[[torch.nn.Module, Any], None] | None = field(default=None, repr=False)

    def uses_reference(self, hp: Any) -> bool:
        """True when this configuration reads the reference model (method or KL retain)."""
        kl = getattr(hp, "retain_loss_type", None) == "KL" and getattr(hp, "alpha", 0) != 0
        return self.needs_reference or kl

    def uses_retain(self, hp: Any) -> bool:
        """True when the retain batch is read (a zero retain weight skips it)."""
        return self.needs_retain and getattr(hp, "alpha", 0) != 0


_SPECS = [
    MethodSpec("GradAscent", L.grad_ascent_loss, C.GradAscentConfig, aliases=("GA",)),
    MethodSpec("GradDiff", L.grad_diff_loss, C.GradDiffConfig, needs_retain=True),
    MethodSpec("NPO", L.npo_loss, C.NPOConfig, needs_reference=True, needs_retain=True),
    MethodSpec("SimNPO", L.simnpo_loss, C.SimNPOConfig, needs_retain=True),
    MethodSpec(
        "DPO",
        L.dpo_loss,
        C.DPOConfig,
        needs_reference=True,
        needs_retain=True,
        needs_idk=True,
        aliases=("IdkDPO",),
    ),
    MethodSpec(
        "UNDIAL",
        L.undial_loss,
        C.UNDIALConfig,
        needs_reference=True,
        needs_retain=True,
        aliases=("UnDIAL",),
    ),
    MethodSpec("SatImp", L.satimp_loss, C.SatImpConfig, needs_retain=True),
    MethodSpec("WGA", L.wga_loss, C.WGAConfig, needs_retain=True),
    MethodSpec(
        "RMU",
        rmu_loss,
        C.RMUConfig,
        needs_reference=True,
        needs_retain=True,
        check_model=check_rmu_model,
    ),
    MethodSpec("CE-U", L.ceu_loss, C.CEUConfig, aliases=("CEU",)),
]

METHODS: dict[str, MethodSpec] = {s.name: s for s in _SPECS}
_LOOKUP = {n.lower(): s for s in _SPECS for n in (s.name, *s.aliases)}


def get_method(name: str) -> MethodSpec:
    """The spec of `name` (case-insensitive, aliases allowed); ConfigError lists valid names."""
    spec = _LOOKUP.get(str(name).lower())
    if spec is None:
        valid = ", ".join(
            f"{s.name}" + (f" ({'/'.join(s.aliases)})" if s.aliases else "") for s in _SPECS
        )
        raise ConfigError(f"unknown unlearning method {name!r}; valid methods: {valid}")
    return spec


def build_method_config(
    name: str,
    profile: str = "openunlearning",
    overrides: Iterable[str] | dict[str, Any] = (),
) -> Any:
    """The method's hyperparameter config under `profile`, then `key=value` overrides.

    Unknown keys and invalid values raise ConfigError naming the method and key.
    """
    spec = get_method(name)
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    mapping = paper_hparams(spec.name) if profile == "paper" else {}
    if isinstance(overrides, dict):
        mapping = {**mapping, **overrides}
        overrides = ()
    try:
        return load_config(spec.config_cls, mapping=mapping, overrides=list(overrides))
    except ConfigError as exc:
        raise ConfigError(f"method {spec.name} (profile {profile}): {exc}") from None
