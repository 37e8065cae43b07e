"""Where computations run: one rule for `device=auto|cpu|cuda|cuda:N` in every command.

The server, the client, the evaluation and the preparation all name their device with the
same words and resolve them here, so `auto` means the same thing everywhere (the first GPU
when one is present, else the CPU) and a GPU that is asked for but absent is an error, never a
silent fall-back to a CPU run that would take a hundred times longer.
"""

from __future__ import annotations

import logging

from mpu.errors import ConfigError

log = logging.getLogger("mpu")
DEVICE_HELP = "auto (a GPU when one is present, else the CPU) | cpu | cuda | cuda:N"


def check_device_name(name: str, where: str = "device") -> None:
    """ConfigError unless `name` is auto, cpu, cuda or cuda:N (checked before any loading)."""
    ok = name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
    if not ok:
        raise ConfigError(f"{where}={name!r}: expected auto, cpu, cuda or cuda:N")


def resolve_device(name: str, what: str = "computations") -> str:
    """The torch device string for `name`; logs the choice at INFO when it is a GPU."""
    import torch

    check_device_name(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
        # the CPU is the expected case on a machine without a GPU: not worth a console line
        log.log(logging.INFO if name != "cpu" else logging.DEBUG,
                "%s on %s (device=auto)", what, _describe(name))  # fmt: skip
    elif name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name}: no CUDA device is available on this machine")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        log.info("%s on %s", what, _describe(name))
    return name


def _describe(name: str) -> str:
    import torch

    if name == "cpu":
        return "the CPU"
    index = int(name[5:]) if ":" in name else torch.cuda.current_device()
    return f"{name} ({torch.cuda.get_device_name(index)})"
