"""Per-architecture adapters: tensor roles and geometry (the only place that knows names)."""

from __future__ import annotations

from pathlib import Path

from mpu.arch.base import Geometry, Layout, Role, TensorInfo
from mpu.arch.families import FAMILIES, spec_for

__all__ = [
    "FAMILIES",
    "Geometry",
    "Layout",
    "Role",
    "TensorInfo",
    "layout_of",
    "load_config",
    "spec_for",
]


def load_config(model_dir: str | Path):
    """The transformers config of a model folder (defaults as transformers builds the model)."""
    from transformers import AutoConfig

    from mpu.errors import CheckpointError

    try:
        return AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{model_dir}/config.json: cannot be read as a model config ({exc})"
        ) from None


def layout_of(config, stored: dict[str, tuple[int, ...]], where: str) -> Layout:
    """Classify a checkpoint's tensors for its family; raises on anything unknown."""
    from mpu.arch.base import classify

    return classify(spec_for(config.model_type, where), config, stored, where)
