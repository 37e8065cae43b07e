"""Issue 3 benchmark: publish + aggregate cost of the MPU server on SmolLM2-135M, m = 2 and 3.

Prints, per m:
  time ratio   = (publish + aggregate wall time) / (one safetensors load + save of the model)
  RSS ratio    = peak resident memory of the publish (resp. aggregate) process / model bytes
Each phase runs in its own fresh subprocess, so its peak RSS (ru_maxrss) is its own; the
baseline load+save runs the same way in the same invocation (machines are noisy: compare
the ratios, not the seconds). The "model" is SmolLM2 plus a small perturbation of every
tensor (a stand-in fine-tune), the base is SmolLM2 itself, κ = 0.01, fp32 throughout.

    python benchmarks/protocol_publish_aggregate.py [--copies 2 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

PHASE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    phase, root, m = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    import torch
    from mpu.server.job import Server
    def hwm():  # VmHWM: this process's own peak RSS (ru_maxrss is inherited across fork+exec)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    rss_idle = hwm()
    t = time.perf_counter()
    if phase == "load_save":
        from safetensors.torch import load_file, save_file
        save_file(load_file(root / "model" / "model.safetensors"), root / f"resaved.safetensors")
    elif phase == "publish":
        Server(root / f"w{m}").publish(root / f"pub{m}", progress=False)
    elif phase == "aggregate":
        Server(root / f"w{m}").aggregate(sorted((root / f"deltas{m}").glob("*.safetensors")), progress=False)
    seconds = time.perf_counter() - t
    peak = hwm()
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "idle_rss": rss_idle}))
    """
)


def run_phase(phase: str, root: Path, m: int = 0) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PHASE, phase, str(root), str(m)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def prepare(root: Path, copies: list[int]) -> int:
    import torch
    from safetensors.torch import load_file, save_file

    from mpu.io.gguf import import_smollm2
    from mpu.server.config import JobConfig
    from mpu.server.job import Server

    base = import_smollm2()
    model = root / "model"
    if not model.exists():
        import shutil

        shutil.copytree(base, model)
        weights = load_file(model / "model.safetensors")
        gen = torch.Generator().manual_seed(0)
        weights = {n: t + 0.002 * torch.randn(t.shape, generator=gen) for n, t in weights.items()}
        save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    for m in copies:
        Server.init(model, base, root / f"w{m}", JobConfig(copies=m, kappa=0.01, gate=False))
    return (model / "model.safetensors").stat().st_size


def make_deltas(root: Path, m: int) -> None:
    """Client stand-in: a small random update per copy, written as a ticketed delta."""
    import torch

    from mpu.io.checkpoint import Checkpoint
    from mpu.io.delta import delta_metadata, read_ticket
    from mpu.io.safetensors_stream import SafetensorsWriter, TensorSpec

    for i, copy in enumerate(sorted((root / f"pub{m}").glob("copy-*"))):
        ck = Checkpoint(copy)
        specs = [TensorSpec(n, torch.float32, ck.spec(n).shape) for n in ck.names()]
        gen = torch.Generator().manual_seed(i)
        with SafetensorsWriter(
            root / f"deltas{m}" / f"{copy.name}.safetensors",
            specs,
            delta_metadata(read_ticket(copy)),
        ) as w:
            for n in ck.names():
                w.add(n, 1e-4 * torch.randn(ck.spec(n).shape, generator=gen))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--copies", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="mpu-bench-"))
    model_bytes = prepare(root, args.copies)
    base = run_phase("load_save", root)
    print(
        f"SmolLM2-135M (fp32), model bytes {model_bytes / 2**20:.0f} MiB; "
        f"baseline load+save {base['seconds']:.2f} s, peak RSS {base['peak_rss'] / model_bytes:.2f}× model bytes"
    )
    print(
        f"(an idle python+torch+mpu process holds {base['idle_rss'] / model_bytes:.2f}× model bytes before any work)"
    )
    print(
        "| m | publish / load+save | aggregate / load+save | (publish+aggregate) / load+save | publish peak RSS / model | aggregate peak RSS / model |"
    )
    print("|---|---|---|---|---|---|")
    for m in args.copies:
        pub = run_phase("publish", root, m)
        make_deltas(root, m)
        agg = run_phase("aggregate", root, m)
        print(
            f"| {m} | {pub['seconds'] / base['seconds']:.2f} | {agg['seconds'] / base['seconds']:.2f} | "
            f"{(pub['seconds'] + agg['seconds']) / base['seconds']:.2f} | {pub['peak_rss'] / model_bytes:.2f} | "
            f"{agg['peak_rss'] / model_bytes:.2f} |"
        )


if __name__ == "__main__":
    main()
