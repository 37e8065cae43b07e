"""RMU: steer one block's hidden states to a fixed random vector on forget data (§3.9).

L_f = MSE(h_θ(B_f), c), L_r = MSE(h_θ(B_r), h_ref(B_r)) (EMBED_DIFF), L = γL_f + αL_r, with
h the output hidden state of the single module whose full name matches `module_regex`.
Upstream draws c from the global torch RNG at the first step; ours derives it from
`steering_seed` so every copy of a round steers to the same, recorded vector.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from mpu.data.formatting import IGNORE_INDEX
from mpu.errors import ConfigError
from mpu.methods.common import model_inputs
from mpu.methods.configs import RMUConfig


def find_module(model: torch.nn.Module, module_regex: str) -> torch.nn.Module:
    """The one module whose qualified name fully matches `module_regex`; else ConfigError."""
    try:
        pattern = re.compile(module_regex)
    except re.error as exc:
        raise ConfigError(f"RMU module_regex={module_regex!r}: not a regex ({exc})") from None
    found = [(n, m) for n, m in model.named_modules() if pattern.fullmatch(n)]
    if len(found) != 1:
        names = [n for n, _ in found][:5]
        blocks = [n for n, _ in model.named_modules() if re.fullmatch(r".*layers\.\d+", n)]
        hint = f"; this model's blocks are {blocks[0]} … {blocks[-1]}" if blocks else ""
        raise ConfigError(
            f"RMU module_regex={module_regex!r} matches {len(found)} modules {names}; "
            f"it must match exactly one (e.g. model\\.layers\\.7){hint}"
        )
    return found[0][1]


def hidden_states(model: torch.nn.Module, module_regex: str, inputs: Mapping[str, Any]):
    """Output hidden state [B, T, d] (first element of the block output) of the matched module."""
    captured: list[torch.Tensor] = []

    def hook(_mod, _inp, out):
        captured.append(out[0] if isinstance(out, tuple | list) else out)

    handle = find_module(model, module_regex).register_forward_hook(hook)
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


def rmu_loss(model, batch: Mapping[str, Any], ref, hp: RMUConfig):
    """γ·MSE(h_θ(B_f), c) + α·MSE(h_θ(B_r), h_ref(B_r))."""
    f = batch["forget"]
    h = hidden_states(model, hp.module_regex, f)
    c = steering_vector(h.size(-1), hp, h.device)
    lf = masked_mse(h, c.expand_as(h), f["labels"])
    logs = {"forget_loss": float(lf.detach())}
    loss = hp.gamma * lf
    if hp.alpha != 0:
        if ref is None:
            raise ValueError("RMU with alpha != 0 needs a reference model (pass reference_model)")
        r = batch["retain"]
        hr = hidden_states(model, hp.module_regex, r)
        with torch.no_grad():
            href = hidden_states(ref, hp.module_regex, r).to(hr.device)
        lr = masked_mse(hr, href, r["labels"])
        logs["retain_loss"] = float(lr.detach())
        loss = loss + hp.alpha * lr
    logs["loss"] = float(loss.detach())
    return loss, logs


def check_rmu_model(model: torch.nn.Module, hp: RMUConfig) -> None:
    """Fail before training when `module_regex` does not name exactly one module."""
    find_module(model, hp.module_regex)
