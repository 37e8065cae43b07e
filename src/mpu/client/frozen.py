"""The frozen models a client run reads: the reference (by default a copy of the model this
call starts from — the only model a real client has, F1/B10) and a teacher, each on
`reference_device` in `reference_precision`."""

from __future__ import annotations

import copy
import warnings

import torch

from mpu.client.train_config import ClientSettings


class ThreatModelWarning(UserWarning):
    """The run uses something a real client would not have (e.g. the clean server model)."""


def reference_model_for(model, given, eff: ClientSettings):
    """The frozen reference/teacher: the caller's model, the adapters-off view of the LoRA
    model (marker "adapters_off", built once the adapters exist), or a copy of `model`; then
    moved to `reference_device` / cast to `reference_precision`."""
    if eff.reference == "clean":
        warnings.warn(
            "reference=clean: the reference model is the clean server model, which a real "
            "client never has; this reproduces the paper but breaks the threat model (docs/protocol.md §10 F1)",
            ThreatModelWarning,
            stacklevel=3,
        )
    keep = eff.reference_device == "same" and eff.reference_precision == "same"
    if given is None and eff.trainable == "lora" and keep:
        return "adapters_off"  # the starting copy = the same weights with adapters off
    # a caller's model is used under no_grad only; its flags are left alone
    ref = copy.deepcopy(model).requires_grad_(False) if given is None else given
    return place(ref, model, eff)


def place(frozen, model, eff: ClientSettings):
    """A frozen model (reference, teacher) on `reference_device` in `reference_precision`."""
    frozen.to(device="cpu" if eff.reference_device == "cpu" else next(model.parameters()).device)
    if eff.reference_precision == "bf16":
        frozen.to(torch.bfloat16)
    return frozen.eval()
