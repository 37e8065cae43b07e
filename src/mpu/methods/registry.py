"""The method registry: one line per method module (each declares its own `METHOD`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mpu.config import load_config
from mpu.errors import ConfigError
from mpu.methods import (
    altpo,
    ceu,
    distill,
    dpo,
    grad_ascent,
    grad_diff,
    npo,
    pdu,
    rmu,
    satimp,
    simnpo,
    undial,
    wga,
)
from mpu.methods.base import Method
from mpu.methods.profiles import PROFILES

_ALL: tuple[Method, ...] = (
    grad_ascent.METHOD,
    grad_diff.METHOD,
    npo.METHOD,
    simnpo.METHOD,
    dpo.METHOD,
    undial.METHOD,
    satimp.METHOD,
    wga.METHOD,
    rmu.METHOD,
    ceu.METHOD,
    pdu.METHOD,
    altpo.METHOD,
    distill.METHOD,
)

METHODS: dict[str, Method] = {m.name: m for m in _ALL}
_LOOKUP = {n.lower(): m for m in _ALL for n in (m.name, *m.aliases)}


def get_method(name: str) -> Method:
    """The method called `name` (case-insensitive, aliases allowed); ConfigError lists valid names."""
    method = _LOOKUP.get(str(name).lower())
    if method is None:
        valid = ", ".join(
            f"{m.name}" + (f" ({'/'.join(m.aliases)})" if m.aliases else "") for m in _ALL
        )
        raise ConfigError(f"unknown unlearning method {name!r}; valid methods: {valid}")
    return method


def rounds_and_epochs(name: str) -> tuple[int, int]:
    """(R, E) of the MPU paper's schedule for `name` (R·E = the stock 10-epoch budget)."""
    return get_method(name).rounds_epochs


def build_method_config(
    name: str,
    profile: str = "openunlearning",
    overrides: Iterable[str] | dict[str, Any] = (),
) -> Any:
    """The method's hyperparameter config under `profile`, then `key=value` overrides.

    Unknown keys and invalid values raise ConfigError naming the method and key.
    """
    method = get_method(name)
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; valid profiles: {', '.join(PROFILES)}")
    mapping = dict(method.paper) if profile == "paper" else {}
    if isinstance(overrides, dict):
        mapping = {**mapping, **overrides}
        overrides = ()
    try:
        return load_config(method.config_cls, mapping=mapping, overrides=list(overrides))
    except ConfigError as exc:
        raise ConfigError(f"method {method.name} (profile {profile}): {exc}") from None
