"""How fast the server distils an emulator: the step as built (`mpu.server.distill`, activation
buffers reused from step to step) against the same step under the allocator setting a server
command leaves behind (every buffer over 1 MiB mapped afresh and faulted in), in one process,
alternating. Prints the seconds per step, the CPU time spent in the kernel, and the ratio.
(A step split into parts whose logits fit glibc's heap was tried: 1.15–1.6× slower, the
smaller matrix products costing more than the page faults they save.)

    python benchmarks/distill_speed.py --model RUNS/smol/models/target --steps 6
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch


def timed(fn) -> tuple[float, float]:
    """Wall seconds and kernel CPU seconds of `fn()`."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter() - start, after.ru_stime - before.ru_stime


def main() -> None:
    from mpu.io.memory import reuse_freed_buffers
    from mpu.server.distill import BATCH, distill, kl_step
    from mpu.server.leakage.models import model_with

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--length", type=int, default=64)
    args = ap.parse_args()
    with reuse_freed_buffers():  # leaves the threshold pinned, as after any server command
        pass
    teacher, student = model_with(args.model), model_with(args.model)
    params = [p for p in student.model.layers[len(student.model.layers) // 2].parameters()]
    vocab = teacher.config.vocab_size
    texts = torch.randint(
        vocab, (4 * BATCH, args.length), generator=torch.Generator().manual_seed(0)
    )
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-5)
    ids = texts[:BATCH]
    kl_step(student, teacher, ids, opt)  # warm-up of both paths
    distill(student, teacher, texts, params, steps=1, lr=1e-5, seed=0)

    steps = {
        "step, buffers mapped afresh": lambda: kl_step(student, teacher, ids, opt),
        "as built (mpu.server.distill)": lambda: distill(student, teacher, texts, params,
                                                         steps=1, lr=1e-5, seed=0),
    }  # fmt: skip
    got = {name: [0.0, 0.0] for name in steps}
    for _ in range(args.steps):
        for name, fn in steps.items():
            for p in params:
                p.requires_grad_(True)
            wall, kernel = timed(fn)
            got[name][0] += wall / args.steps
            got[name][1] += kernel / args.steps
    print("| step | s per step | kernel CPU s per step | time vs the first |\n|---|---|---|---|")
    base = got["step, buffers mapped afresh"][0]
    for name, (wall, kernel) in got.items():
        print(f"| {name} | {wall:.2f} | {kernel:.2f} | {wall / base:.2f}× |")
    print(f"({BATCH} × {args.length} tokens per step, vocabulary {vocab})")


if __name__ == "__main__":
    main()
