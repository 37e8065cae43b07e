"""The client's optimizer: which parameters train (the scope, never an emulator block), AdamW
or SGD with HF Trainer's decay groups, HF's warm-up/decay schedule, and fp32 master weights
for the bf16_weights profile."""

from __future__ import annotations

import re

import torch

from mpu.arch import is_block_parameter
from mpu.client.train_config import ClientSettings
from mpu.errors import ConfigError


class MasterWeights:
    """fp32 copies the optimizer steps, rounded back into bf16 weights after every step.

    Emulates HF Trainer + `paged_adamw_32bit` on a model loaded in bf16 (stock OpenUnlearning):
    fp32 optimizer state, bf16 weights, so updates below half a bf16 ulp vanish as upstream.
    """

    def __init__(self, named: list[tuple[str, torch.nn.Parameter]]) -> None:
        self.pairs = [(p, p.detach().float().clone()) for _, p in named]
        self.named = [(n, m) for (n, _), (_, m) in zip(named, self.pairs, strict=True)]

    def load_grads(self) -> None:
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.float()

    @torch.no_grad()
    def write_back(self) -> None:
        for p, m in self.pairs:
            p.copy_(m)
            m.copy_(p)


def select_trainable(model: torch.nn.Module, scope: str) -> list[tuple[str, torch.nn.Parameter]]:
    """Named parameters in scope `all`, `decoder` (decoder blocks) or a regex (re.search) — never
    the emulator blocks of an emulator copy (`mpu.arch.frozen_block`)."""
    from mpu.arch import frozen_block

    named = [(n, p) for n, p in model.named_parameters() if not frozen_block(model.config, n)]
    if scope in ("all", "salient"):  # salient: all of them, masked by the trainer
        return named
    if scope == "lora":  # the adapters `attach_lora` added (PEFT names them lora_A / lora_B)
        chosen = [(n, p) for n, p in named if ".lora_" in n]
        if not chosen:
            raise ConfigError("trainable=lora: the model has no LoRA adapters attached")
        return chosen
    if scope == "decoder":
        chosen = [(n, p) for n, p in named if is_block_parameter(model.config, n)]
    else:
        pattern = re.compile(scope)
        chosen = [(n, p) for n, p in named if pattern.search(n)]
    if not chosen:
        raise ConfigError(f"trainable={scope!r} matches no parameter of the model")
    return chosen


def _norm_param_names(model: torch.nn.Module) -> set[str]:
    out = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, torch.nn.LayerNorm) or "Norm" in type(mod).__name__:
            out.update(
                f"{mname}.{p}" if mname else p for p, _ in mod.named_parameters(recurse=False)
            )
    return out


def build_optimizer(
    model: torch.nn.Module, named: list[tuple[str, torch.nn.Parameter]], eff: ClientSettings
) -> torch.optim.Optimizer:
    """AdamW or SGD over `named`; HF-style no-decay group for biases/norms unless told otherwise."""
    if eff.decay_norms_and_biases or eff.weight_decay == 0:
        groups = [{"params": [p for _, p in named], "weight_decay": eff.weight_decay}]
    else:
        norms = _norm_param_names(model)
        nd = [p for n, p in named if n.endswith("bias") or n in norms]
        dec = [p for n, p in named if not (n.endswith("bias") or n in norms)]
        groups = [
            g
            for g in (
                {"params": dec, "weight_decay": eff.weight_decay},
                {"params": nd, "weight_decay": 0.0},
            )
            if g["params"]
        ]
    if eff.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=eff.lr, momentum=eff.momentum, foreach=True)
    # fused: one kernel per parameter for the whole AdamW update (CPU and CUDA, fp32/bf16/fp16)
    # instead of torch's default on CPU — and HF Trainer's there — a Python loop of five ops
    # per parameter; the same update up to float rounding. foreach elsewhere.
    fusable = all(
        not hasattr(p, "to_local")  # sharded parameters (DTensor): foreach
        and p.device.type in ("cpu", "cuda")
        and p.dtype in (torch.float32, torch.bfloat16, torch.float16)
        for _, p in named
    )
    kernel = {"fused": True} if fusable else {"foreach": True}
    return torch.optim.AdamW(groups, lr=eff.lr, betas=tuple(eff.betas), eps=eff.eps, **kernel)


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """HF `get_{constant,linear}_schedule_with_warmup` factor at global step `step`."""
    if step < warmup:
        return step / max(1, warmup)
    if schedule == "constant":
        return 1.0
    return max(0.0, (total - step) / max(1, total - warmup))
