"""Typed configs with strict YAML + dotted `key=value` overrides (OmegaConf structured configs).

Every config in MPU is a dataclass whose fields carry `metadata={"help": ...}`. `load_config`
merges, in order, the dataclass defaults, a YAML recipe and command-line overrides; an unknown
key anywhere is an error naming the key (the reference implementation silently dropped them,
MPU.md F5/B18). Validation lives in each dataclass's `__post_init__`, which runs on the merged
result.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

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


def load_config(
    cls: type[T],
    *,
    yaml_path: str | Path | None = None,
    mapping: Mapping[str, Any] | None = None,
    overrides: Iterable[str] = (),
) -> T:
    """Build `cls` from defaults, then a YAML file, then a mapping, then `key=value` overrides."""
    try:
        merged = OmegaConf.structured(cls)
        OmegaConf.set_struct(merged, True)
        for f in dataclasses.fields(cls):  # free-form dict fields (validated by their consumer)
            if str(f.type).replace(" ", "").startswith(("dict[", "Dict[")) and isinstance(
                merged.get(f.name), DictConfig
            ):
                OmegaConf.set_struct(merged[f.name], False)
        if yaml_path is not None:
            path = Path(yaml_path)
            if not path.is_file():
                raise ConfigError(f"{path}: recipe file not found")
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        if mapping:
            merged = OmegaConf.merge(merged, OmegaConf.create(dict(mapping)))
        overrides = list(overrides)
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form key=value")
        if overrides:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(overrides))
        return OmegaConf.to_object(merged)  # runs __post_init__ validation
    except OmegaConfBaseException as exc:
        where = f" (recipe {yaml_path})" if yaml_path else ""
        raise ConfigError(f"{cls.__name__}{where}: {exc}".splitlines()[0]) from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain dict of a config dataclass (for logs and reports: the effective values)."""
    return dataclasses.asdict(config)


def describe(cls: type) -> str:
    """One line per field with its default and help text, for `--help` epilogues."""
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        lines.append(f"  {f.name}={default!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)
