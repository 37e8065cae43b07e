"""How well each aggregation removes the noise, measured in weight space (issue 25).

For each method, seed and κ, the client unlearns the tiny TOFU target through each scheme and
we compare the result with Clean's (the client on θ itself, same seed and data order):

    weight error = ‖θ_scheme − θ_clean‖ / ‖θ_clean − θ_target‖
    forget error = |p_scheme − p_clean| / |p_target − p_clean|

(p: the forget set's answer probability, TOFU's forget_Q_A_Prob) — 0 is Clean exactly, 1 is as
far from Clean as Clean moved. The maths predicts one noisy copy's error to grow like κ, the
paper's harmonic MPU's like κ² (its second-order bias), extrapolation on three line copies like
κ³ and on four like κ⁴ — as long as the client's update is a smooth function of the noise.
Schemes:

- noised: one copy (α = 1);
- paper: the paper's MPU, m = 2, zero-sum noise, α = (1, 2), harmonic weights, continuous maps;
- harmonic: the same with quarter-turn maps (separates the maps from the weights);
- mpu2 / mpu3 / mpu4: our default design (line noise, extrapolation, quarter turns), m copies;
- pairs4: four zero-sum copies all at α = 1 with equal weights (averaging, no extrapolation);
- lines2x2 / lines2x4: two independent noise lines of two / four copies (`lines=2`), each
  extrapolated alone, the two averaged.

`--draws N` repeats every cell N times, each with a fresh secret key (the spread over draws is
what one job's result varies by).

    python benchmarks/denoising.py --methods NPO GradDiff --kappas 0 0.05 0.1 0.3 1 \
        --seeds 0 1 2 --out runs/denoising

Resumable: each (method, seed, scheme, κ) writes one JSON line to OUT/errors.jsonl and is
skipped when present. Prints a table of mean ± sd over seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import time
from pathlib import Path

SCHEMES = {
    "noised": ("noised", {}),
    "paper": ("mpu_paper", {"copies": 2}),
    "harmonic": ("mpu", {"copies": 2, "aggregation": "harmonic", "alphas": "linspace"}),
    "mpu2": ("mpu", {"copies": 2}),
    "mpu3": ("mpu", {"copies": 3}),
    "mpu4": ("mpu", {"copies": 4}),
    # four copies all at α = 1 in three zero-sum directions, equal weights: no extrapolation,
    # the second-order bias of one α = 1 copy, the copies' independent errors averaged
    "pairs4": ("mpu", {"copies": 4, "aggregation": "harmonic", "alphas": "1,1,1,1"}),
    "lines2x2": ("mpu", {"copies": 4, "lines": 2}),
    "lines2x4": ("mpu", {"copies": 8, "lines": 2}),
}


def distance(a: Path, b: Path) -> float:
    from mpu.io.checkpoint import Checkpoint

    ca, cb = Checkpoint(a), Checkpoint(b)
    total = 0.0
    for name in ca.names():
        total += float((ca.read(name).double() - cb.read(name).double()).square().sum())
    return total**0.5


def forget_prob(model: Path, data: str, split: str) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.eval.tofu import evaluate_tofu

    tok = AutoTokenizer.from_pretrained(str(model))
    net = AutoModelForCausalLM.from_pretrained(str(model), dtype="float32").eval()
    res = evaluate_tofu(net, tok, data, forget_split=split, metrics=["forget_Q_A_Prob"],
                        progress=False)  # fmt: skip
    return float(res["forget_Q_A_Prob"]["agg_value"])


def run_one(cfg, method: str, variant: str, server: dict, work: Path, inputs) -> Path:
    """The final model of one (method, variant, server settings) job."""
    from mpu.io.checkpoint import Checkpoint
    from mpu.pipeline.jobs import client_settings, unlearn

    data, models = inputs
    run_cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, **server))
    n_params = Checkpoint(models / "target").n_params()
    return unlearn(run_cfg, client_settings(run_cfg, method, n_params), variant, data, models, work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=["NPO", "GradDiff"])
    ap.add_argument("--kappas", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.3, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    ap.add_argument("--draws", type=int, default=1, help="fresh-key repeats of every cell")
    ap.add_argument("--forget-split", default="forget01")
    ap.add_argument("--out", type=Path, default=Path("runs/denoising"))
    ap.add_argument("--client", nargs="*", default=[], metavar="KEY=VALUE",
                    help="client settings for every run, e.g. eps=1e-4 optimizer=sgd")  # fmt: skip
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "errors.jsonl"
    if not args.table_only:
        measure(args, log)
    if not log.is_file():
        raise SystemExit(f"{log}: no measurements yet")
    print(table([json.loads(line) for line in log.read_text().splitlines()]))


def measure(args, log: Path) -> None:
    from transformers.utils import logging as hf_logging

    from mpu.pipeline.experiment import ExperimentConfig
    from mpu.pipeline.inputs import resolve_inputs
    from reproduce import key_values

    hf_logging.set_verbosity_error()
    done = set()
    if log.is_file():
        done = {tuple(json.loads(x)["key"]) for x in log.read_text().splitlines()}
    for seed in args.seeds:
        cfg = ExperimentConfig(forget_split=args.forget_split, seed=seed, progress=False,
                               client=key_values(args.client, "--client"))  # fmt: skip
        data, models = resolve_inputs(cfg, print)
        inputs = (data, Path(models))
        for method in args.methods:
            clean = run_one(cfg, method, "clean", {}, args.out / f"clean-{method}-s{seed}", inputs)
            target = Path(models) / "target"
            moved = distance(clean, target)
            p_clean = forget_prob(clean, data, args.forget_split)
            p_moved = forget_prob(target, data, args.forget_split) - p_clean
            for kappa in args.kappas:
                for scheme in args.schemes:
                    for draw in range(args.draws):
                        key = [method, seed, scheme, kappa] + ([draw] if draw else [])
                        if tuple(key) in done or (scheme == "noised" and kappa == 0):
                            continue
                        row = measure_cell(cfg, method, scheme, kappa, args.out, inputs,
                                           (clean, moved, p_clean, p_moved))  # fmt: skip
                        row["key"] = key
                        with log.open("a") as f:
                            f.write(json.dumps(row) + "\n")
                        print(f"{method} s{seed} {scheme} κ={kappa:g} draw {draw}: weights "
                              f"{row['error']:.4g}, forget {row['forget_error']:.4g}", flush=True)  # fmt: skip


def measure_cell(cfg, method: str, scheme: str, kappa: float, out: Path, inputs, ref) -> dict:
    """One run of `scheme` at κ (a fresh secret key) and its errors against Clean's `ref`
    (Clean's model, how far Clean moved, its forget probability and how far that moved)."""
    clean, moved, p_clean, p_moved = ref
    data = inputs[0]
    variant, server = SCHEMES[scheme]
    work = out / "work"
    t = time.perf_counter()
    final = run_one(cfg, method, variant, {**server, "kappa": kappa}, work, inputs)
    error = distance(final, clean) / moved
    p = forget_prob(final, data, cfg.forget_split)
    shutil.rmtree(work, ignore_errors=True)
    return {"error": error, "forget_error": abs(p - p_clean) / abs(p_moved), "forget_prob": p,
            "clean_forget_prob": p_clean, "seconds": time.perf_counter() - t}  # fmt: skip


def table(rows: list[dict]) -> str:
    """Both errors' tables: mean ± sd over seeds, a row per (method, scheme), a column per κ."""
    return "\n\n".join(one_table(rows, field) for field in ("error", "forget_error"))


def one_table(rows: list[dict], field: str) -> str:
    rows = [r for r in rows if field in r]
    kappas = sorted({r["key"][3] for r in rows})
    lines = [f"{field.replace('_', ' ')}:", "",
             "| method | scheme | " + " | ".join(f"κ = {k:g}" for k in kappas) + " |",
             "|---|---|" + "---|" * len(kappas)]  # fmt: skip
    for method in sorted({r["key"][0] for r in rows}):
        for scheme in SCHEMES:
            cells = []
            for kappa in kappas:
                vals = [r[field] for r in rows if r["key"][0] == method
                        and r["key"][2] == scheme and r["key"][3] == kappa]  # fmt: skip
                if not vals:
                    cells.append("—")
                    continue
                sd = f" ± {statistics.stdev(vals):.2g}" if len(vals) > 1 else ""
                cells.append(f"{statistics.fmean(vals):.3g}{sd}")
            if any(c != "—" for c in cells):
                lines.append(f"| {method} | {scheme} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
