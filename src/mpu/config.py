"""Typed configs with strict YAML + dotted `key=value` overrides (OmegaConf structured configs).

Every config in MPU is a dataclass whose fields carry `metadata={"help": ...}`. `load_config`
merges, in order, the dataclass defaults, a YAML recipe and command-line overrides; an unknown
key anywhere is an error naming the key and the nearest valid ones (the reference
implementation silently dropped them), and a value of the wrong type names the key, the value
and the expected type. Validation lives in each dataclass's `__post_init__`, which runs on the
merged result; `check_number` is the one helper for numeric settings (finite, in range).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from mpu.errors import ConfigError

T = TypeVar("T")


def field(default: Any = dataclasses.MISSING, *, help: str, **kw: Any) -> Any:
    """A dataclass field with help text (PEFT style); mutable defaults go through `default_factory`."""
    metadata = {"help": help}
    if isinstance(default, list | dict):
        value = default
        return dataclasses.field(
            default_factory=lambda: type(value)(value), metadata=metadata, **kw
        )
    return dataclasses.field(default=default, metadata=metadata, **kw)


def check_number(
    owner: object | str,
    name: str,
    value: float | int | None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = True,
) -> None:
    """ConfigError naming `Owner.name`, the value and the range unless value is finite and in it.

    NaN fails every comparison, so a bare `x <= 0` check lets it through; this does not.
    """
    where = owner if isinstance(owner, str) else type(owner).__name__
    if value is None and allow_none:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        rng = " and ".join(p for p in (lo, hi) if p)
        raise ConfigError(
            f"{where}.{name}={value!r}: expected a finite number{' ' + rng if rng else ''}"
        )


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints.get(f.name)
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(t):
            keys += _all_keys(t, f"{prefix}{f.name}.")
    return keys


def _expected(msg: str) -> str:
    m = re.search(r"could not be converted to (\w+)", msg)
    if m:
        return {"Float": "a number", "Integer": "an integer", "Boolean": "true or false"}.get(
            m.group(1), m.group(1)
        )
    if "is not a ListConfig" in msg:
        return "a list, e.g. [a,b]"
    if "is not a DictConfig" in msg or "not a subclass of" in msg:
        return "a mapping of sub-keys"
    return msg.splitlines()[0]


def suggest(cls: type, key: str) -> list[str]:
    """Valid keys of `cls` close to `key` (nested keys with the same last part first)."""
    keys = _all_keys(cls)
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.endswith("." + leaf) and k != key]
    close = [k for k in difflib.get_close_matches(key, keys, n=3) if k not in same_leaf]
    return (same_leaf + close)[:3]


def explain(cls: type, exc: OmegaConfBaseException) -> str:
    """One line naming the key, the value and what was expected."""
    key = getattr(exc, "full_key", None) or "?"
    msg = str(getattr(exc, "msg", None) or exc)
    if isinstance(exc, ConfigKeyError):
        near = suggest(cls, key)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        return f"unknown key {key!r}{hint}"
    if isinstance(exc, ValidationError):
        value = getattr(exc, "value", None)
        if "is not a ListConfig" in msg:
            return f"{key}={value!r}: expected a list, e.g. {key}=[{value}]"
        return f"{key}={value!r}: expected {_expected(msg)}"
    return f"{key}: {msg.splitlines()[0]}"


def load_config(
    cls: type[T],
    *,
    yaml_path: str | Path | None = None,
    mapping: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> T:
    """Build `cls` from defaults, then a YAML file, then a mapping, then `key=value` overrides."""
    where = f" (recipe {yaml_path})" if yaml_path else ""
    try:
        merged = OmegaConf.structured(cls)
        OmegaConf.set_struct(merged, True)
        _open_free_dicts(merged, cls)
        if yaml_path is not None:
            merged = OmegaConf.merge(merged, _read_recipe(Path(yaml_path)))
        if mapping:
            merged = OmegaConf.merge(merged, OmegaConf.create(dict(mapping)))
        overrides = list(overrides)
        seen: dict[str, str] = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"{item!r} is not a setting: write key=value (e.g. {item}=...)")
            key = item.split("=", 1)[0].strip()
            if key in seen and seen[key] != item:
                raise ConfigError(f"{key} is given twice ({seen[key]!r} and {item!r}): say it once")
            seen[key] = item
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(merged)  # runs __post_init__ validation
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{cls.__name__}{where}: {explain(cls, exc)}") from None


def _read_recipe(path: Path):
    """A YAML recipe as a config node: a mapping of settings, or a one-line error naming it."""
    import yaml

    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{path}: not a readable YAML recipe ({reason})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of settings (key: value), not a "
                          f"{type(data).__name__}")  # fmt: skip
    return OmegaConf.create(data)


def _open_free_dicts(node: DictConfig, cls: type) -> None:
    """Free-form `dict[...]` fields (validated by their consumer) accept any sub-key."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        t = hints.get(f.name)
        sub = node.get(f.name)
        if not isinstance(sub, DictConfig):
            continue
        if dataclasses.is_dataclass(t):
            _open_free_dicts(sub, t)
        elif str(f.type).replace(" ", "").startswith(("dict[", "Dict[")):
            OmegaConf.set_struct(sub, False)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass (for logs and reports: the effective values)."""
    return dataclasses.asdict(config)


def describe(cls: type, prefix: str = "", skip: Iterable[str] = ()) -> str:
    """One line per setting (nested configs as dotted keys) with its default and help text."""
    lines = []
    hints = typing.get_type_hints(cls)
    skip = set(skip)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if any(key == k or key.startswith(k + ".") for k in skip):
            continue
        t = hints.get(f.name)
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = f.default if f.default is not dataclasses.MISSING else "(required)"
        if dataclasses.is_dataclass(t) and dataclasses.is_dataclass(default):
            lines.append(describe(t, f"{prefix}{f.name}.", skip))
            continue
        if dataclasses.is_dataclass(default):  # a union with a dataclass (hparams)
            lines.append(describe(type(default), f"{prefix}{f.name}.", skip))
            continue
        lines.append(f"  {prefix}{f.name}={default!r}: {f.metadata.get('help', '')}")
    return "\n".join(line for line in lines if line)
