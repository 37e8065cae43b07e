"""LoRA clients: train low-rank adapters on a published copy, then merge them into it.

The server never sees adapters. The client trains `W + (α/r)·B·A` on each copy, merges the
product into `W` before saving, and `client diff` returns the dense delta of the merged copy, so
the server's Post-Process (inverse maps, harmonic weights) is the same exact code as for full
fine-tuning. What LoRA changes is the shape of each copy's update: rank ≤ r per projection
before the server's inverse (docs/methods.md, "LoRA clients").

Two pitfalls handled here: with gradient checkpointing the embedding output must require grad
(`enable_input_require_grads`), else the checkpointed blocks see no grad-requiring input and the
adapters receive no gradient at all; and a reference model for `reference=copy` is the same
network with its adapters switched off, which costs no second copy of the weights.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from mpu.config import field
from mpu.errors import ConfigError


@dataclass
class LoRAConfig:
    """Adapter shape for `trainable=lora` (PEFT's LoRA; defaults of common LLM recipes)."""

    rank: int = field(8, help="adapter rank r")
    alpha: float = field(16.0, help="scaling numerator: the update is (alpha/rank)·B·A")
    dropout: float = field(0.0, help="dropout on the adapter input (0 keeps runs deterministic)")
    target_modules: list[str] | None = field(
        None,
        help="module names to adapt (suffixes); default: the attention and MLP projections of "
        "the model's family (mpu.arch.lora_target_modules)",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"lora.rank={self.rank!r}: must be an integer >= 1")
        if not self.alpha > 0:
            raise ConfigError(f"lora.alpha={self.alpha!r}: must be > 0")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora.dropout={self.dropout!r}: must be in [0, 1)")
        if self.target_modules is not None and not self.target_modules:
            raise ConfigError("lora.target_modules: name at least one module (or leave unset)")


def attach_lora(model: torch.nn.Module, cfg: LoRAConfig) -> Any:
    """Wrap `model` with fresh LoRA adapters (B = 0, so the function is unchanged) and return
    the PEFT model; only the adapter weights require grad."""
    from peft import LoraConfig, get_peft_model

    from mpu.arch import lora_target_modules

    targets = cfg.target_modules or lora_target_modules(model.config)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t.rsplit(".", 1)[-1] not in present]
    if missing:
        raise ConfigError(f"lora.target_modules: no module named {', '.join(missing)} in the model")
    peft_cfg = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def merge_lora(peft_model: Any) -> torch.nn.Module:
    """Fold every adapter into its base weight and drop the adapter modules (in place: the
    model object the caller passed to `attach_lora` is now the merged model)."""
    return peft_model.merge_and_unload()


class AdapterOffReference(torch.nn.Module):
    """The starting copy as a reference model, without a second copy of the weights: the
    trained network run with its adapters disabled, in eval mode, under no_grad."""

    def __init__(self, peft_model: Any) -> None:
        super().__init__()
        self._peft = [peft_model]  # a list: not registered as a submodule (no double counting)

    @property
    def config(self):
        return self._peft[0].config

    def parameters(self, recurse: bool = True):
        return self._peft[0].parameters(recurse)

    def get_base_model(self) -> torch.nn.Module:
        """The shared network (RMU hooks its blocks; they run here with adapters off)."""
        return self._peft[0].get_base_model()

    def forward(self, *args, **kwargs):
        model = self._peft[0]
        was = model.training
        model.eval()
        try:
            with torch.no_grad(), model.disable_adapter():
                return model(*args, **kwargs)
        finally:
            model.train(was)


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Gradient checkpointing of the decoder blocks (re-entrant, as most recipes run it), with
    the embedding output made to require grad: without that, blocks whose inputs come from a
    frozen embedding (LoRA, `trainable=decoder`) return no gradient to their weights."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"gradient_checkpointing: {type(model).__name__} does not support it in transformers"
        )
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    model.enable_input_require_grads()


def disable_checkpointing(model: torch.nn.Module) -> None:
    model.activation_checkpointing_disable()
    with contextlib.suppress(AttributeError):
        model.disable_input_require_grads()
