"""What the network costs: MPU on Flower (`mpu serve` + `mpu join`) against the file path.

For each model the same server job (one workdir and its twin: the same secret key) runs R rounds
twice with the same cheap client (GradAscent, a fixed number of steps, so training is a small,
equal share of both):

  file path    in one process: `Server.publish` → `unlearn_copy` on each copy → `Server.aggregate`
               (what `mpu server publish | client unlearn | server aggregate` run, without the
               processes' start-up: the lower bound of any transport)
  Flower path  `mpu serve` (SuperLink + ServerApp) and `mpu join` (SuperNode + ClientApp) as
               processes on 127.0.0.1 with TLS and node authentication

It reports bytes per round (file path: the m copy folders plus the m deltas and receipts, what
would be carried by hand; Flower: the payload of the messages, after content addressing) and
wall time (Flower: end to end from `mpu serve` start, and the round loop alone), as ratios in
the same run, and checks that both paths end with bit-identical parameters.

The Flower path runs as `mpu join` ships ("warm": a worker that keeps the client's imports and
data loaded, and short polls), as Flower does by itself ("stock": `--no-worker --poll 3`, a
fresh ClientApp process per message and a 3 s idle pull), and as shipped with the tensors on
the direct data path ("direct": `mpu serve --direct-port P`; Flower carries the manifest and
the small files); "fixed cost per round" is (round loop − file path) / rounds.

    python benchmarks/federated.py [--models tiny smollm2] [--rounds 1] [--copies 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENT = ["max_steps=2", "batch_size=2", "grad_accum=1", "lr=1e-3"]
METHOD = "GradAscent"


def build(kind: str, root: Path) -> None:
    """root/base and root/target (base + a small perturbation: a stand-in fine-tune)."""
    import torch
    from safetensors.torch import load_file, save_file

    if kind == "smollm2":
        from mpu.io.gguf import import_smollm2

        shutil.copytree(import_smollm2(), root / "base")
    else:
        from mpu.io.datasets import load_split
        from mpu.pipeline.tiny import build_tiny_llama, train_tokenizer

        rows = load_split(root / "data", "full")
        tok = train_tokenizer(f"{r['question']} {r['answer']}" for r in rows)
        model = build_tiny_llama(tok)
        model.save_pretrained(root / "base")
        tok.save_pretrained(root / "base")
    shutil.copytree(root / "base", root / "target")
    weights = load_file(root / "target" / "model.safetensors")
    gen = torch.Generator().manual_seed(1)
    weights = {n: (t.float() + 0.002 * torch.randn(t.shape, generator=gen)).to(t.dtype)
               for n, t in weights.items()}  # fmt: skip
    save_file(weights, root / "target" / "model.safetensors", metadata={"format": "pt"})


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def file_path(workdir: Path, root: Path, data: Path, rounds: int) -> dict:
    from mpu.client.train_config import ClientTrainConfig
    from mpu.client.unlearn import load_client_data, unlearn_copy
    from mpu.config import load_config
    from mpu.server.job import Server

    cfg = load_config(ClientTrainConfig, overrides=[f"method={METHOD}", *CLIENT])
    client_data = load_client_data(data, "forget01", cfg)
    server = Server(workdir)
    carried, per_round = 0, []
    start = time.perf_counter()
    for _ in range(rounds):
        r, begun = server.round, time.perf_counter()
        copies = server.publish(root / f"pub{r}", progress=False)
        deltas = []
        for copy in copies:
            out = root / f"client{r}-{copy.name}"
            _, delta, _ = unlearn_copy(copy, client_data, cfg, out, order_seed=r, progress=False)
            deltas.append(delta)
            carried += folder_bytes(copy) + delta.stat().st_size
            carried += (out / "receipt.json").stat().st_size
        server.aggregate(deltas, progress=False)
        per_round.append(time.perf_counter() - begun)
    return {"seconds": time.perf_counter() - start, "bytes": carried, "round_seconds": per_round}


# how `mpu serve` and `mpu join` run, per variant: as shipped (warm), Flower's own per-message
# processes and waits (stock), and as shipped with the tensors on the direct data path (direct)
VARIANTS = {
    "warm": ([], []),
    "stock": ([], ["--no-worker", "--poll", "3"]),
    "direct": (["--direct-port", "FREE"], []),
}


def flower_path(workdir: Path, root: Path, data: Path, rounds: int, variant: str) -> dict:
    from mpu.federated.certs import make_certs
    from mpu.federated.deploy import free_port

    certs = make_certs(root / "certs", hosts=["127.0.0.1"], clients=1)
    address = f"127.0.0.1:{free_port()}"
    serve_args, join_args = VARIANTS[variant]
    serve_args = [str(free_port()) if a == "FREE" else a for a in serve_args]
    mpu = [sys.executable, "-m", "mpu.cli"]
    start = time.perf_counter()
    serve = subprocess.Popen([*mpu, "serve", "--workdir", str(workdir), "--rounds", str(rounds),
                              "--certs", str(certs.folder), "--address", address, *serve_args],
                             stdout=(root / "serve.log").open("wb"), stderr=subprocess.STDOUT,
                             start_new_session=True)  # fmt: skip
    join = subprocess.Popen([*mpu, "join", "--server", address, "--name", "client",
                             "--workdir", str(root / "client"), "--data", str(data),
                             "--split", "forget01", "--method", METHOD, "--ca",
                             str(certs.ca_cert), "--key", str(certs.client_key(1)), *join_args,
                             *CLIENT],
                            stdout=(root / "join.log").open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    try:
        code = serve.wait(timeout=3600)
    finally:
        for proc in (serve, join):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
    if code != 0:
        raise SystemExit(f"mpu serve failed ({code}):\n{(root / 'serve.log').read_text()[-3000:]}")
    seconds = time.perf_counter() - start
    summary = json.loads((workdir / "federation" / "summary.json").read_text())
    return {"seconds": seconds, "loop_seconds": summary["seconds"],
            "bytes": summary["bytes_sent"] + summary["bytes_received"],
            "bytes_sent": summary["bytes_sent"], "bytes_received": summary["bytes_received"],
            "round_seconds": summary["round_seconds"]}  # fmt: skip


def identical(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    from mpu.server.job import Server

    ra, rb = Server(a).round, Server(b).round
    fa = load_file(str(a / "rounds" / f"r{ra:03d}" / "model.safetensors"))
    fb = load_file(str(b / "rounds" / f"r{rb:03d}" / "model.safetensors"))
    return ra == rb and fa.keys() == fb.keys() and all(fa[k].equal(fb[k]) for k in fa)


def run(kind: str, rounds: int, copies: int, variants: list[str], keep: bool = False) -> dict:
    from mpu.data import make_dataset
    from mpu.server.config import JobConfig
    from mpu.server.job import Server

    root = Path(tempfile.mkdtemp(prefix=f"mpu-fed-{kind}-"))
    try:
        data = make_dataset("tofu", root / "data", seed=0)
        build(kind, root)
        job = JobConfig(gate=False, kappa=0.1, copies=copies)
        Server.init(root / "target", root / "base", root / "W", job)
        for name in ["file", *variants]:
            shutil.copytree(root / "W", root / f"W-{name}")
            (root / name).mkdir()
        files = file_path(root / "W-file", root / "file", data, rounds)
        flower = {v: flower_path(root / f"W-{v}", root / v, data, rounds, v)
                  for v in variants}  # fmt: skip
        for v in variants:
            flower[v]["identical"] = identical(root / f"W-{v}", root / "W-file")
        model = folder_bytes(root / "target")
        return {"model": kind, "model_bytes": model, "rounds": rounds, "copies": copies,
                "file": files, "flower": flower}  # fmt: skip
    finally:
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def print_table(rows: list[dict]) -> None:
    """One row per model and Flower variant; the fixed cost is what a Flower round costs
    beyond the file path's round (same server, same client work)."""
    mib = 2**20
    print("| model | m | join | file path MiB/round | Flower MiB/round (sent + received) "
          "| file path s | Flower s (end to end) | Flower s (round loop) "
          "| fixed cost per round s ((loop − file) / R) | loop / file | same θ |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        f, n = r["file"], r["rounds"]
        for variant, w in r["flower"].items():
            print(f"| {r['model']} ({r['model_bytes'] / mib:.1f} MiB) | {r['copies']} | {variant} "
                  f"| {f['bytes'] / n / mib:.2f} | {w['bytes'] / n / mib:.2f} "
                  f"({w['bytes_sent'] / n / mib:.2f} + {w['bytes_received'] / n / mib:.2f}) "
                  f"| {f['seconds']:.1f} | {w['seconds']:.1f} | {w['loop_seconds']:.1f} "
                  f"| {(w['loop_seconds'] - f['seconds']) / n:.2f} "
                  f"| {w['loop_seconds'] / f['seconds']:.2f} "
                  f"| {'yes' if w['identical'] else 'NO'} |")  # fmt: skip


def print_rounds(rows: list[dict]) -> None:
    """Each round's seconds, file path against Flower: the first round of a fresh client
    process also pays its warm-up (imports, first touch of the training's memory)."""
    for r in rows:
        files = ", ".join(f"{x:.1f}" for x in r["file"]["round_seconds"])
        for variant, w in r["flower"].items():
            ratios = [b / a for a, b in zip(r["file"]["round_seconds"], w["round_seconds"],
                                            strict=False)]  # fmt: skip
            print(
                f"{r['model']} {variant}: round seconds file path [{files}], Flower "
                f"[{', '.join(f'{x:.1f}' for x in w['round_seconds'])}], per-round ratio "
                f"[{', '.join(f'{x:.2f}' for x in ratios)}]"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--copies", type=int, default=2)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--keep", action="store_true", help="keep the work folders (logs)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="warm: `mpu join` as shipped (a warm worker, short polls); stock: "
                   "Flower's per-message ClientApp process and 3 s idle pull (the baseline); "
                   "direct: as shipped, with `mpu serve --direct-port` (tensors outside "
                   "Flower's messages)")  # fmt: skip
    args = p.parse_args()
    os.environ.setdefault("MPU_CLIENT_KEY", str(Path(tempfile.mkdtemp()) / "client.key"))
    rows = [run(kind, args.rounds, args.copies, args.variants, args.keep) for kind in args.models]
    print_table(rows)
    print_rounds(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
