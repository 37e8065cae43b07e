"""RMU (Li et al. 2024, WMDP, arXiv 2403.03218): steer one block's hidden states to a fixed
random vector on forget data, keep them on retain data.

L_f = MSE(h_θ(B_f), c), L_r = MSE(h_θ(B_r), h_ref(B_r)) (EMBED_DIFF), L = γL_f + αL_r, with h
the output hidden state of decoder block `layer`. The block is named by the architecture
adapter; by default OpenUnlearning's layer 7 when the model has it, else the middle block.
Upstream draws c from the global torch RNG at the first step; ours derives it from
`steering_seed`, so every copy of a round steers to the same, recorded vector.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from mpu.arch import block_module, n_blocks
from mpu.config import field
from mpu.errors import ConfigError
from mpu.methods.base import Batch, Method, positive
from mpu.methods.common import model_inputs
from mpu.text import IGNORE_INDEX

log = logging.getLogger("mpu.methods")
STOCK_LAYER = 7  # OpenUnlearning's `model.layers.7`


@dataclass
class RMUConfig:
    """Representation misdirection."""

    gamma: float = field(1.0, help="weight γ of the forget (steering) loss")
    alpha: float = field(1.0, help="weight α of the retain (EMBED_DIFF) loss")
    steering_coeff: float = field(
        2.0, help="norm s of the steering vector (RMU.yaml: 2; class default 20)"
    )
    layer: int | None = field(
        None,
        help="decoder block whose output is steered (unset: 7, OpenUnlearning's, when the "
        "model has it, else the middle block)",
    )
    steering_seed: int = field(
        0, help="seed of the steering direction u ~ U[0,1)^d (ours: explicit, recorded)"
    )
    retain_loss_type: str = field("EMBED_DIFF", help="RMU's retain loss; only EMBED_DIFF")

    def __post_init__(self) -> None:
        positive(self, "gamma", self.gamma, allow_zero=True)
        positive(self, "alpha", self.alpha, allow_zero=True)
        positive(self, "steering_coeff", self.steering_coeff)
        if self.layer is not None and self.layer < 0:
            raise ConfigError(f"RMUConfig.layer={self.layer}: must be >= 0")
        if self.retain_loss_type != "EMBED_DIFF":
            raise ConfigError(
                f"RMUConfig.retain_loss_type={self.retain_loss_type!r}: RMU supports EMBED_DIFF only"
            )


def steered_layer(config, hp: RMUConfig) -> int:
    """The block RMU steers on this model: `hp.layer`, else 7 when it exists, else the middle."""
    if hp.layer is not None:
        return hp.layer
    n = n_blocks(config)
    return STOCK_LAYER if n > STOCK_LAYER else n // 2


def steered_module(model: torch.nn.Module, hp: RMUConfig) -> torch.nn.Module:
    """The steered decoder block (inside the base model when LoRA adapters wrap it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_submodule(block_module(base.config, steered_layer(base.config, hp)))


def hidden_states(model: torch.nn.Module, hp: RMUConfig, inputs: Batch) -> torch.Tensor:
    """Output hidden state [B, T, d] (first element of the block output) of the steered block."""
    captured: list[torch.Tensor] = []

    def hook(_mod, _inp, out):
        captured.append(out[0] if isinstance(out, tuple | list) else out)

    handle = steered_module(model, hp).register_forward_hook(hook)
    device = next(model.parameters()).device
    try:
        model(**{k: v.to(device) for k, v in model_inputs(inputs).items()})
    finally:
        handle.remove()
    return captured[0].float()


def steering_vector(d: int, hp: RMUConfig, device: torch.device) -> torch.Tensor:
    """c = s·u/‖u‖ with u ~ U[0,1)^d from a generator seeded with `steering_seed`."""
    gen = torch.Generator().manual_seed(hp.steering_seed)
    u = torch.rand(d, generator=gen, dtype=torch.float32)
    return (hp.steering_coeff * u / u.norm()).to(device)


def masked_mse(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(1/B) Σ_b (1/|M_b|) Σ_{t∈M_b} (1/d)‖a − b‖², M_b = unshifted labelled positions."""
    mask = (labels.to(a.device) != IGNORE_INDEX).float()
    per_token = ((a - b) ** 2).mean(-1)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1)).mean()


def rmu_loss(model, batch: Batch, ref, hp: RMUConfig):
    """γ·MSE(h_θ(B_f), c) + α·MSE(h_θ(B_r), h_ref(B_r))."""
    f = batch["forget"]
    h = hidden_states(model, hp, f)
    c = steering_vector(h.size(-1), hp, h.device)
    lf = masked_mse(h, c.expand_as(h), f["labels"])
    logs = {"forget_loss": float(lf.detach())}
    loss = hp.gamma * lf
    if hp.alpha != 0:
        if ref is None:
            raise ValueError("RMU with alpha != 0 needs a reference model (pass reference_model)")
        r = batch["retain"]
        hr = hidden_states(model, hp, r)
        with torch.no_grad():
            href = hidden_states(ref, hp, r).to(hr.device)
        lr = masked_mse(hr, href, r["labels"])
        logs["retain_loss"] = float(lr.detach())
        loss = loss + hp.alpha * lr
    logs["loss"] = float(loss.detach())
    return loss, logs


def check_rmu_model(model: torch.nn.Module, hp: Any) -> None:
    """Fail before training when the block does not exist; say which block is steered."""
    layer = steered_layer(model.config, hp)
    name = block_module(model.config, layer)
    why = (
        "set by layer="
        if hp.layer is not None
        else (
            "OpenUnlearning's default"
            if layer == STOCK_LAYER
            else f"the middle block: the model has {n_blocks(model.config)}, not the stock 8+"
        )
    )
    log.info("RMU steers the output of %s (%s)", name, why)


METHOD = Method(
    "RMU",
    rmu_loss,
    RMUConfig,
    needs_reference=True,
    needs_retain=True,
    rounds_epochs=(1, 10),
    check_model=check_rmu_model,
)
