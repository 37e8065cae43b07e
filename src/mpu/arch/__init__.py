"""Per-architecture adapters: tensor roles and geometry (the only place that knows names).

Code outside this package that needs a block, the LM head or the embeddings asks here:
`block_module(config, i)`, `is_block_parameter(config, name)`, `n_blocks(config)`,
`output_embedding_name(config)`, `embedding_parameter_names(config, names)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from mpu.arch.base import Geometry, Layout, Role, TensorInfo, geometry_of
from mpu.arch.families import FAMILIES, spec_for

__all__ = [
    "FAMILIES",
    "Geometry",
    "Layout",
    "Role",
    "TensorInfo",
    "block_module",
    "embedding_parameter_names",
    "is_block_parameter",
    "layout_of",
    "load_config",
    "lora_target_modules",
    "n_blocks",
    "output_embedding_name",
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


def n_blocks(config) -> int:
    """Number of decoder blocks of a (supported) model config."""
    return geometry_of(config, spec_for(config.model_type)).n_layers


def block_module(config, layer: int) -> str:
    """Module path of decoder block `layer`; ConfigError when the model has no such block."""
    from mpu.errors import ConfigError

    n = n_blocks(config)
    if not 0 <= layer < n:
        raise ConfigError(f"block {layer} does not exist: the model has blocks 0 … {n - 1}")
    return spec_for(config.model_type).block_module(layer)


def is_block_parameter(config, name: str) -> bool:
    """Whether parameter `name` belongs to a decoder block."""
    return re.match(spec_for(config.model_type).block_pattern, name) is not None


EMULATOR_CONFIG_KEY = "mpu_emulator"  # config.json of an emulator copy (mpu.server.emulator)


def block_index(config, name: str) -> int | None:
    """The decoder block a parameter belongs to (found anywhere in the name, so wrapped
    models' prefixed names count too), or None."""
    found = re.search(spec_for(config.model_type).block_pattern.lstrip("^"), name)
    return None if found is None else int(found.group(1))


def frozen_block(config, name: str) -> bool:
    """Whether parameter `name` of a published copy must stay frozen: a block of an emulator
    copy that the server does not apply (its config says which it does). Nothing outside the
    blocks, and nothing of an ordinary copy, is frozen."""
    emulator = getattr(config, EMULATOR_CONFIG_KEY, None)
    if not emulator:
        return False
    layer = block_index(config, name)
    return layer is not None and layer not in emulator["trainable_blocks"]


def output_embedding_name(config) -> str:
    """The LM head weight's parameter name."""
    return spec_for(config.model_type).output_embedding


def embedding_parameter_names(config, names: Iterable[str]) -> list[str]:
    """The token-embedding and LM-head parameters among `names` (rows indexed by token id)."""
    spec = spec_for(config.model_type)
    wanted = set(spec.tied_alias) | set(spec.stored_names.values())
    return [n for n in names if n in wanted]


def lora_target_modules(config) -> list[str]:
    """Module paths (relative to a block) of the attention and MLP projections: the default
    LoRA targets, e.g. `self_attn.q_proj` … `mlp.down_proj` for Llama (PEFT matches suffixes)."""
    spec = spec_for(config.model_type)
    skip = {Role.BLOCK_OTHER, Role.Q_NORM, Role.K_NORM}
    return [
        suffix.removesuffix(".weight")
        for suffix, role in spec.roles.items()
        if suffix.endswith(".weight") and role not in skip
    ]
