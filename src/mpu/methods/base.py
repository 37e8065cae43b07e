"""What a method declares: one `Method` per module (the TRL habit: config, loss, inputs, schedule).

Adding an unlearning method is one new module in this package that defines its config
dataclass, its loss and a `METHOD = Method(...)`, plus one line in `registry.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mpu.errors import ConfigError

LossFn = Callable[[torch.nn.Module, Any, Any, Any], tuple[torch.Tensor, dict[str, float]]]
Batch = Mapping[str, Any]
Result = tuple[torch.Tensor, dict[str, float]]


@dataclass(frozen=True)
class Method:
    """One unlearning method.

    `needs_reference`: the loss reads a frozen reference/teacher model (a KL retain loss also
    needs one: see `uses_reference`). `needs_retain`: the batch carries a retain part.
    `needs_idk`: the batch carries an `alternate` refusal part (IdkDPO). `needs_alternates`:
    the batch's `alternate` part is drawn from each forget row's own `alternate` answers (AltPO). `rounds_epochs`: the
    MPU paper's (R, E) split of the stock 10-epoch budget (docs/methods.md). `paper`: loss
    hyperparameters where the MPU reference client differs from OpenUnlearning.
    `check_model`: refuses a model the method cannot run on, before any training.
    `new_state`: for a method that carries state across its steps (PDU's dual variable), a
    factory `new_state(hp)` called once per client call; the loss then receives it as a fifth
    argument, and the trainer calls `state.end_epoch(completed)` after every epoch.
    `needs_teacher`: the loss also reads a frozen teacher (keyword `teacher`; Distill), the
    model the client setting `teacher` names.
    """

    name: str
    loss: LossFn
    config_cls: type
    needs_reference: bool = False
    needs_retain: bool = False
    needs_idk: bool = False
    needs_alternates: bool = False
    needs_teacher: bool = False
    rounds_epochs: tuple[int, int] = (1, 10)
    paper: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    check_model: Callable[[torch.nn.Module, Any], None] | None = field(default=None, repr=False)
    new_state: Callable[[Any], Any] | None = field(default=None, repr=False)

    def uses_reference(self, hp: Any) -> bool:
        """True when this configuration reads the reference model (method or KL retain)."""
        kl = getattr(hp, "retain_loss_type", None) == "KL" and getattr(hp, "alpha", 0) != 0
        return self.needs_reference or kl

    def uses_retain(self, hp: Any) -> bool:
        """True when the retain batch is read (a zero retain weight skips it)."""
        # PDU: a dual variable that starts at α = 0 still grows and reads the retain batch
        dual = getattr(hp, "primal_dual", False)
        return self.needs_retain and (getattr(hp, "alpha", 0) != 0 or dual)


def positive(cfg: object, name: str, value: float, *, allow_zero: bool = False) -> None:
    """ConfigError naming `Config.name` unless value > 0 (or ≥ 0), finite."""
    ok = value == value and value not in (float("inf"), float("-inf"))
    ok = ok and (value > 0 or (allow_zero and value == 0))
    if not ok:
        rel = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{type(cfg).__name__}.{name}={value}: must be a finite number {rel}")


def need_reference(ref: torch.nn.Module | None, name: str) -> torch.nn.Module:
    if ref is None:
        raise ValueError(f"{name} needs a reference model (pass reference_model)")
    return ref
