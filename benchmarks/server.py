"""Server round cost: init, publish and aggregate against one safetensors load+save of the same
checkpoint, in process and as CLI commands, with peak memory.

For each model (a tiny Llama, SmolLM2-135M, a random Llama with a 1B-class config written to
disk), dtype (fp32, bf16) and m, every phase runs in a fresh process:

- in process: the phase's own call timed inside the process (library imports — torch,
  transformers — excluded), divided by the load+save timed the same way (median of 3 runs in
  this invocation);
- CLI: the wall time of `mpu server init|publish|aggregate` as a subprocess (interpreter start,
  imports and all), divided by the wall time of a `python -c` process doing the load+save;
- peak RSS: the phase process's VmHWM divided by the model's bytes; in brackets, the part above
  the process's high-water mark after its imports (python + torch + transformers alone take
  ~0.4 GB, which dominates the ratio for small models).

`os.sync()` runs before every timed phase, so none pays for the previous one's writeback.
The client is a stand-in: a small random update per copy, written as a ticketed delta.

    python benchmarks/server.py [--models tiny smollm2 1b] [--dtypes float32 bfloat16]
                                [--copies 2 3 5] [--cli] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

PHASE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    phase, root, m = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    import torch
    from mpu.server.config import JobConfig
    from mpu.server.job import Server
    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    if phase == "init":
        import transformers.models.auto.modeling_auto  # a library import, like torch's: not timed
    idle = hwm()
    t = time.perf_counter()
    if phase == "load_save":
        from safetensors.torch import load_file, save_file
        save_file(load_file(root / "model" / "model.safetensors"), root / "resaved.safetensors")
    elif phase == "init":
        Server.init(root / "model", root / "base", root / f"w{m}", JobConfig(copies=m, kappa=0.01))
    elif phase == "publish":
        Server(root / f"w{m}").publish(root / f"pub{m}", progress=False)
    elif phase == "aggregate":
        Server(root / f"w{m}").aggregate(sorted((root / f"deltas{m}").glob("*.safetensors")), progress=False)
    print(json.dumps({"seconds": time.perf_counter() - t, "peak": hwm(), "idle": idle}))
    """
)
LOAD_SAVE_CLI = (
    "from safetensors.torch import load_file, save_file; import sys; "
    "save_file(load_file(sys.argv[1]), sys.argv[2])"
)


def in_process(phase: str, root: Path, m: int = 0) -> dict:
    os.sync()
    out = subprocess.run([sys.executable, "-c", PHASE, phase, str(root), str(m)],
                         check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def wall(cmd: list[str]) -> float:
    os.sync()
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def build(kind: str, dtype: str, root: Path) -> int:
    """root/base and root/model (base + a small perturbation: a stand-in fine-tune)."""
    import torch
    from safetensors.torch import load_file, save_file

    torch_dtype = getattr(torch, dtype)
    if kind == "smollm2":
        from mpu.io.gguf import import_smollm2

        src = import_smollm2()
        shutil.copytree(src, root / "base")
        weights = {n: t.to(torch_dtype) for n, t in load_file(src / "model.safetensors").items()}
        cfg = json.loads((src / "config.json").read_text())
        cfg["dtype"] = dtype
        (root / "base" / "config.json").write_text(json.dumps(cfg))
        save_file(weights, root / "base" / "model.safetensors", metadata={"format": "pt"})
    else:
        from transformers import AutoModelForCausalLM, LlamaConfig

        geo = (dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, vocab_size=3072)
               if kind == "tiny" else
               dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=32000))  # fmt: skip
        torch.manual_seed(0)
        with torch.device("cpu"):
            model = AutoModelForCausalLM.from_config(LlamaConfig(**geo), dtype=torch_dtype)
        model.save_pretrained(root / "base", max_shard_size="100GB")
        del model
    shutil.copytree(root / "base", root / "model")
    weights = load_file(root / "model" / "model.safetensors")
    gen = torch.Generator().manual_seed(1)
    weights = {
        n: (t.float() + 0.002 * torch.randn(t.shape, generator=gen)).to(t.dtype)
        for n, t in weights.items()
    }
    save_file(weights, root / "model" / "model.safetensors", metadata={"format": "pt"})
    return (root / "model" / "model.safetensors").stat().st_size


def make_deltas(root: Path, m: int) -> None:
    import torch

    from mpu.io.checkpoint import Checkpoint
    from mpu.io.delta import delta_metadata, read_ticket
    from mpu.io.safetensors_stream import SafetensorsWriter, TensorSpec

    shutil.rmtree(root / f"deltas{m}", ignore_errors=True)
    for i, copy in enumerate(sorted((root / f"pub{m}").glob("copy-*"))):
        ck = Checkpoint(copy)
        specs = [TensorSpec(n, torch.float32, ck.spec(n).shape) for n in ck.names()]
        gen = torch.Generator().manual_seed(i)
        with SafetensorsWriter(root / f"deltas{m}" / f"{copy.name}.safetensors", specs,
                               delta_metadata(read_ticket(copy)), durable=False) as w:  # fmt: skip
            for n in ck.names():
                w.add(n, 1e-4 * torch.randn(ck.spec(n).shape, generator=gen))
        # Aggregation reads only the deltas and the workdir; dropping each copy once its delta
        # is written keeps the disk peak near (m + 3) model sizes (fp32 1B-class at m = 5 ≈ 40 GB).
        shutil.rmtree(copy)


def clean(root: Path, m: int) -> None:
    for name in (f"w{m}", f"pub{m}", f"deltas{m}", f"cli-w{m}", f"cli-pub{m}"):
        shutil.rmtree(root / name, ignore_errors=True)


def run_model(kind: str, dtype: str, copies: list[int], root: Path, cli: bool) -> list[str]:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    size = build(kind, dtype, root)
    base_ip = statistics.median(in_process("load_save", root)["seconds"] for _ in range(3))
    model_file = str(root / "model" / "model.safetensors")
    base_cli = statistics.median(
        wall([sys.executable, "-c", LOAD_SAVE_CLI, model_file, str(root / "resaved.safetensors")])
        for _ in range(3)
    )
    rows = []
    head = (f"{kind} {dtype}: {size / 2**20:.0f} MiB; load+save {base_ip:.2f} s in process, "
            f"{base_cli:.2f} s as a process")  # fmt: skip
    print(head, flush=True)
    for m in copies:
        init = in_process("init", root, m)
        pub = in_process("publish", root, m)
        make_deltas(root, m)
        agg = in_process("aggregate", root, m)
        row = (f"| {kind} | {dtype} | {m} | {init['seconds'] / base_ip:.2f} | {pub['seconds'] / base_ip:.2f} | "
               f"{agg['seconds'] / base_ip:.2f} | {(pub['seconds'] + agg['seconds']) / base_ip:.2f} | "
               f"{pub['peak'] / size:.2f} ({(pub['peak'] - pub['idle']) / size:.2f}) | "
               f"{agg['peak'] / size:.2f} ({(agg['peak'] - agg['idle']) / size:.2f}) |")  # fmt: skip
        if cli:
            mpu = [sys.executable, "-m", "mpu.cli", "server"]
            w, p = str(root / f"cli-w{m}"), str(root / f"cli-pub{m}")
            t_init = wall([*mpu, "init", "--model", str(root / "model"), "--base", str(root / "base"),
                           "--workdir", w, "--copies", str(m), "--kappa", "0.01"])  # fmt: skip
            t_pub = wall([*mpu, "publish", "--workdir", w, "--out", p, "--quiet"])
            shutil.rmtree(root / f"pub{m}")
            shutil.move(p, root / f"pub{m}")
            make_deltas(root, m)
            deltas = sorted(str(d) for d in (root / f"deltas{m}").glob("*.safetensors"))
            t_agg = wall([*mpu, "aggregate", "--workdir", w, "--quiet", *deltas])
            row += (f" {t_init / base_cli:.2f} | {t_pub / base_cli:.2f} | {t_agg / base_cli:.2f} | "
                    f"{(t_pub + t_agg) / base_cli:.2f} |")  # fmt: skip
        rows.append(row)
        print(row, flush=True)
        clean(root, m)
    return [head, *rows]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2", "1b"]
    )
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--copies", type=int, nargs="+", default=[2, 3, 5])
    ap.add_argument(
        "--cli", action="store_true", help="also time the CLI commands (fresh processes)"
    )
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    root = args.workdir or Path(tempfile.mkdtemp(prefix="mpu-server-bench-"))
    cols = "| model | dtype | m | init | publish | aggregate | publish+aggregate | publish RSS | aggregate RSS |"
    if args.cli:
        cols += " CLI init | CLI publish | CLI aggregate | CLI publish+aggregate |"
    print(
        "ratios: time / one load+save of the checkpoint; RSS / model bytes (in brackets: "
        "above the process's RSS after its imports)",
        flush=True,
    )
    print(cols, flush=True)
    print("|---" * (cols.count("|") - 1) + "|", flush=True)
    for kind in args.models:
        for dtype in args.dtypes:
            run_model(kind, dtype, args.copies, root / f"{kind}-{dtype}", args.cli)
            shutil.rmtree(root / f"{kind}-{dtype}", ignore_errors=True)


if __name__ == "__main__":
    main()
