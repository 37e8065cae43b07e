"""Data-parallel clients through `accelerate`: N processes, one run's mathematics.

A run with N processes and gradient accumulation g (per process) takes an optimizer step every
g·N micro-batches of the same seeded stream a 1-process run with accumulation g·N reads: micro-
batch k of a window goes to process k mod N, each process backpropagates `loss / (g·N)` of its
own micro-batches, and the step sums the processes' gradients (accelerate's `reduce`). The step
gradient is then Σ_k ∇loss_k / (g·N) exactly as in one process, for every loss (token means,
sequence means, reference KLs alike), so the delta equals the 1-process delta to fp32
summation-order tolerance. Splitting micro-batches rather than rows is the point: per-process
token means averaged over processes are not the token mean of the batch, which is why other
tools' results move with the GPU count.

Gradients are summed once per optimizer step, after the window — what DDP's `no_sync` plus a
final synchronised backward does — because DDP's hooks need every process to run the same
number of backward passes, and an epoch's last, partial window gives some processes none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: `index` of `count` (1 = a plain single-process run)."""

    index: int = 0
    count: int = 1
    local_index: int = 0  # on this machine: the GPU this process trains on

    def device(self, name: str) -> str:
        """`cuda` means this process's own GPU when the run has several processes."""
        return f"cuda:{self.local_index}" if name == "cuda" and self.count > 1 else name

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def owns(self, micro_batch: int) -> bool:
        """Whether this process computes the `micro_batch`-th micro-batch (0-based)."""
        return micro_batch % self.count == self.index

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the processes, in one flat buffer per dtype
        (a process that ran no micro-batch in this window contributes zeros)."""
        if self.count == 1:
            return
        from accelerate.utils import reduce

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        for group in by_dtype.values():
            flat = reduce(torch.cat([p.grad.reshape(-1) for p in group]), reduction="sum")
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

    def wait(self) -> None:
        """Barrier: every process reaches this point before any goes on."""
        if self.count > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """Whether a launcher (accelerate launch, torchrun) started this process in a group."""
    return world_size() > 1


def current_processes() -> Processes:
    """The process group `accelerate launch` started this process in (1 process otherwise).

    Reads the launcher's environment first so a plain run never initialises accelerate."""
    if not launched():
        return Processes()
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # gloo on CPU-only machines
    if state.num_processes != world_size():
        raise RuntimeError(
            f"accelerate sees {state.num_processes} process(es), the launcher started "
            f"{world_size()}: check the accelerate configuration"
        )
    return Processes(state.process_index, state.num_processes, state.local_process_index)


def launch_processes(count: int, cli_args: list[str]) -> int:
    """Run `mpu <cli_args>` in `count` processes with `accelerate launch` (on a free local
    port) and return its exit code; each process sees the launcher's WORLD_SIZE and trains."""
    import socket
    import subprocess
    import sys

    from mpu.errors import ConfigError

    if count < 1:
        raise ConfigError(f"--num-processes={count}: must be >= 1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu",  # torchrun-style launcher; it runs gloo on CPU-only machines
        "--num_processes", str(count), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(port),
        "-m", "mpu.cli", *cli_args,
    ]  # fmt: skip
    return subprocess.run(cmd, check=False).returncode
