"""Benchmark: build the embedded TOFU benchmark's models and check that it is valid.

Generates synthetic TOFU, runs `prepare_models` (wall time measured, CPU threads and load
average recorded) and checks must-show 1 of issue 4: target forget-set answer probability
>= 0.8, retain model far lower, forget quality of the target against the retain model < 1e-3
and of the retain model against itself = 1.0.

    python benchmarks/prepare_tofu.py --out /tmp/mpu-prepare            # tiny-llama, forget10
    python benchmarks/prepare_tofu.py --out /tmp/mpu-smol --model smollm2 \
        --forget-split forget01 max_retain_items=360 epochs=3
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> int:
    from mpu.config import load_config
    from mpu.data import make_dataset
    from mpu.pipeline.prepare import PrepareConfig, prepare_models

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="tiny-llama")
    p.add_argument("--forget-split", default="forget10")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    out = Path(args.out)
    data = out / "data"
    if not (data / "manifest.json").is_file():
        make_dataset("tofu", data, seed=args.seed)
    cfg = load_config(
        PrepareConfig,
        mapping={"data": str(data), "out": str(out / "models"), "model": args.model,
                 "forget_split": args.forget_split, "seed": args.seed},
        overrides=args.overrides,
    )  # fmt: skip
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    record = prepare_models(cfg)
    wall = time.perf_counter() - t0
    s = record["summary"]
    checks = {
        "target_forget_prob>=0.8": s["target"]["forget_prob"] >= 0.8,
        "retain_forget_prob<target-0.2": s["retain"]["forget_prob"]
        < s["target"]["forget_prob"] - 0.2,
        "target_forget_quality<1e-3": s["target"]["forget_quality"] < 1e-3,
        "retain_forget_quality==1": s["retain"]["forget_quality"] == 1.0,
    }
    result = {
        "model": args.model,
        "forget_split": args.forget_split,
        "wall_s": wall,
        "timings_s": record["timings_s"],
        "cpu_count": os.cpu_count(),
        "torch_threads": record["torch_threads"],
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "summary": s,
        "checks": checks,
    }
    (out / "benchmark.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwall time {wall:.0f} s on {os.cpu_count()} CPUs (load avg {load_before[0]:.1f})")
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
