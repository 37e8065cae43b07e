"""Sharded clients (`sharding=fsdp`): a model larger than one device, trained by N processes
that each hold 1/N of its parameters, gradients and optimizer state.

We use PyTorch's own `torch.distributed.fsdp.fully_shard` (FSDP2) rather than accelerate's
FSDP plugin: the client already runs its own loop (one method's loss, MPU's micro-batch
ownership and once-per-step gradient sums, docs/methods.md), which the plugin would have to be
bent around, while `fully_shard` is a per-module call that leaves the loop as it is; it runs on
CPU (gloo) as well as on GPUs (NCCL), so the same code is tested here and used there. Each
decoder block is one shard group (its parameters gathered for its forward and backward and
freed after), the embeddings, final norm and LM head the root group.

Two details keep the run's mathematics the one-process run's (client/distributed.py):
gradients are *summed* over the processes (the loss already carries 1/(g·N)), not averaged;
and every process must run the same number of forward and backward passes, so a process that
owns fewer micro-batches of a window (an epoch's last, partial window) runs a zero-weight one.
At the end the full parameters are gathered once and the model comes back unsharded.
"""

from __future__ import annotations

import torch

from mpu.errors import ConfigError

SHARDINGS = ("none", "fsdp")


def check_sharding(sharding: str, trainable: str) -> None:
    if sharding not in SHARDINGS:
        raise ConfigError(f"sharding={sharding!r}: expected one of {', '.join(SHARDINGS)}")
    if sharding == "fsdp" and trainable == "lora":
        raise ConfigError("sharding=fsdp with trainable=lora: LoRA adapters already fit one "
                          "device; shard full-parameter training only")  # fmt: skip
    if sharding == "fsdp" and trainable == "salient":
        raise ConfigError("sharding=fsdp with trainable=salient: the importance pass and the "
                          "mask need whole tensors; run salient updates on one process")  # fmt: skip


def shard(model: torch.nn.Module) -> None:
    """Shard `model` in place over the running process group: each decoder block, then the
    root (whatever is left: embeddings, norm, head); gradients summed over processes."""
    from torch.distributed.fsdp import fully_shard

    from mpu.arch import spec_for

    blocks = model.get_submodule(spec_for(model.config.model_type).block_prefix)
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    for module in model.modules():
        if hasattr(module, "set_gradient_divide_factor"):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def local_parameters(model: torch.nn.Module) -> int:
    """Parameters this process holds (its shards; every parameter when not sharded)."""
    from torch.distributed.tensor import DTensor

    return sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel()
               for p in model.parameters())  # fmt: skip


def full(t: torch.Tensor) -> torch.Tensor:
    """A (sharded) tensor as a plain full tensor; a collective: every process calls it."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def gather(model: torch.nn.Module) -> torch.nn.Module:
    """The trained parameters gathered into a plain, unsharded model of the same config (a
    collective: every process calls it; each gets the whole model once, at the end)."""
    from transformers import AutoModelForCausalLM

    state = {name: full(p.detach()).clone() for name, p in model.named_parameters()}
    plain = AutoModelForCausalLM.from_config(model.config, dtype=next(iter(state.values())).dtype)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if unexpected or [n for n in missing if n not in _tied(plain)]:
        raise RuntimeError(
            f"gathering the sharded model: missing {missing}, unexpected {unexpected}"
        )
    plain.tie_weights()
    return plain.train(model.training)


def _tied(model: torch.nn.Module) -> set[str]:
    """Parameter names that are another parameter under a second name (tied embeddings)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    return tied
