"""kill -9 at random points of `mpu server publish`, `mpu server aggregate` and `mpu run`, then
the same command again: the result equals an uninterrupted run's bit for bit and no staging
debris is left anywhere. 8 + 8 + 4 = 20 kill points, drawn from a fixed seed."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpu.server.config import JobConfig
from mpu.server.job import Server
from toolkit import build_pair, write_delta

pytestmark = pytest.mark.slow  # every case starts and kills processes
SEED = 20261201
MPU = [sys.executable, "-m", "mpu.cli"]


def _digest(folder: Path) -> dict[str, str]:
    """Content hash of every file below `folder` (bytes only: the fixed mtimes are not content)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in (".lock", "server.log")
    }


def _debris(*folders: Path) -> list[Path]:
    return [
        p
        for f in folders
        if f.exists()
        for p in f.rglob(".*")
        if any(k in p.name for k in (".staging-", ".tmp-", ".old-"))
    ]


def _kill_after(cmd: list[str], delay: float) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t0


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """A Llama big enough that publishing and aggregating take a while after start-up."""
    from transformers import LlamaConfig

    root = tmp_path_factory.mktemp("kill9")
    cfg = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=4, vocab_size=8192)  # fmt: skip
    model, base = build_pair(cfg, root / "m")
    pristine = root / "pristine"
    Server.init(model, base, pristine, JobConfig(copies=3, kappa=0.02, gate=False))
    return root, pristine


def test_kill9_during_publish_then_rerun_is_bitwise_identical(medium):
    root, pristine = medium
    ref_work, ref_out = root / "ref-w", root / "ref-out"
    shutil.copytree(pristine, ref_work)
    duration = _timed(
        [*MPU, "server", "publish", "--workdir", str(ref_work), "--out", str(ref_out), "--quiet"]
    )
    reference = _digest(ref_out)
    rng = random.Random(SEED)
    for i in range(8):
        work, out = root / f"p{i}-w", root / f"p{i}-out"
        shutil.copytree(pristine, work)
        cmd = [*MPU, "server", "publish", "--workdir", str(work), "--out", str(out), "--quiet"]
        _kill_after(cmd, rng.uniform(0.3, 0.98) * duration)
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        assert _digest(out) == reference, f"kill point {i}: the rerun published other copies"
        assert not _debris(work, out), f"kill point {i}: debris {_debris(work, out)}"


def test_kill9_during_aggregate_then_rerun_is_bitwise_identical(medium):
    root, pristine = medium
    published = root / "published"
    shutil.copytree(pristine, published)
    copies = Server(published).publish(root / "agg-out", progress=False)
    deltas = [
        write_delta(c, root / f"agg-{c.name}.safetensors", lambda n, t: t.normal_(0, 1e-4))
        for c in copies
    ]
    ref = root / "agg-ref"
    shutil.copytree(published, ref)
    args = ["server", "aggregate", "--quiet", *map(str, deltas)]
    duration = _timed([*MPU, *args, "--workdir", str(ref)])
    reference = _digest(ref / "rounds" / "r002")
    rng = random.Random(SEED + 1)
    for i in range(8):
        work = root / f"a{i}"
        shutil.copytree(published, work)
        cmd = [*MPU, *args, "--workdir", str(work)]
        _kill_after(cmd, rng.uniform(0.3, 0.98) * duration)
        state = json.loads((work / "state.json").read_text())
        if state["round"] == 1:  # killed before the state write: run it again
            subprocess.run(cmd, check=True, capture_output=True, timeout=600)
        assert json.loads((work / "state.json").read_text())["round"] == 2
        assert _digest(work / "rounds" / "r002") == reference, f"kill point {i}"
        assert not _debris(work), f"kill point {i}: debris {_debris(work)}"


def _run_cmd(data, models, out) -> list[str]:
    return [*MPU, "run", f"data={data}", f"models={models}", f"out={out}", "forget_split=forget01",
            "methods=[NPO]", "variants=[clean,mpu]", "server.seeds=paper_public", "keep_models=true",
            "eval_limit=6", "eval_max_new_tokens=8", "progress=false", "workers=2"]  # fmt: skip


def _run_result(out: Path) -> tuple[list, dict]:
    report = json.loads((out / "report.json").read_text())
    models = {p.parent.parent.name: hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted(out.glob("work/*/final/model.safetensors"))}  # fmt: skip
    return [(r["method"], r["variant"], r["summary"]) for r in report["runs"]], models


def test_kill9_during_mpu_run_then_rerun_gives_the_same_models_and_numbers(tofu_world, tmp_path):
    data, models = tofu_world
    ref = tmp_path / "ref"
    duration = _timed(_run_cmd(data, models, ref))
    reference = _run_result(ref)
    assert len(reference[1]) == 2
    rng = random.Random(SEED + 2)
    for i in range(4):
        out = tmp_path / f"r{i}"
        _kill_after(_run_cmd(data, models, out), rng.uniform(0.2, 0.9) * duration)
        subprocess.run(_run_cmd(data, models, out), check=True, capture_output=True, timeout=900)
        assert _run_result(out) == reference, f"kill point {i}"
        assert not _debris(out), f"kill point {i}: debris {_debris(out)}"
