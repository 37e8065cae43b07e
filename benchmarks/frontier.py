"""The privacy–utility frontier: for each protection setting, what leaks against how well the
unlearning still works (docs/threat-model.md, docs/protocol.md).

A setting is (κ, ρ, m, client DP ε) with the default aggregation and maps. Every cell is an
`mpu run` folder under OUT (Clean once per seed; MPU, or the dp variant when ε is finite, per
setting and seed), so the grid resumes where it stopped. Each MPU run is audited by the
pipeline (`mpu.server.leakage`): functional leakage L of the most telling copy as published
and of all copies combined with the public base, token recall of the update's embedding rows,
and the membership AUC of the aggregated update, raw and calibrated against random updates.

    python benchmarks/frontier.py --seeds 0 1 2                  # tiny model, star grid
    python benchmarks/frontier.py --grid full                    # every κ × ρ × m × ε
    python benchmarks/frontier.py --models PAIR --data DATA --seeds 0 --eval-limit 40
    python benchmarks/frontier.py --table-only

`--grid star` (default) varies one knob at a time around (ρ = 0, m = smallest, ε = ∞) at every
κ, with DP at the smallest κ only; `--extend` then raises κ by 3× while the most telling copy
keeps L ≥ 0.5. Writes OUT/frontier.md (the table), OUT/frontier.json (the same numbers) and OUT/frontier.png (leakage against
unlearning degradation, the Pareto front marked).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from reproduce import degradation, key_values, prepare

METHODS = ["NPO", "GradDiff"]


def setting_name(s: dict) -> str:
    unit = "E" if s.get("unit") == "example" else "e"  # E: DP-SGD, each forget item the unit
    eps = "" if math.isinf(s["epsilon"]) else f"-{unit}{s['epsilon']:g}"
    return f"k{s['kappa']:g}-r{s['residual']:g}-m{s['copies']}{eps}"


def settings(args, kappas: list[float]) -> list[dict]:
    """The (κ, ρ, m, ε) settings of the grid, in run order."""
    rho0, m0, inf = args.residuals[0], args.copies[0], math.inf
    out = []
    for i, kappa in enumerate(kappas):
        if args.grid == "full":
            out += [{"kappa": kappa, "residual": r, "copies": m, "epsilon": e}
                    for r in args.residuals for m in args.copies for e in args.epsilons]  # fmt: skip
            continue
        out += [
            {"kappa": kappa, "residual": r, "copies": m0, "epsilon": inf} for r in args.residuals
        ]
        out += [
            {"kappa": kappa, "residual": rho0, "copies": m, "epsilon": inf} for m in args.copies[1:]
        ]
        if i == 0:
            out += [{"kappa": kappa, "residual": rho0, "copies": m0, "epsilon": e}
                    for e in args.epsilons if not math.isinf(e)]  # fmt: skip
    out = [{**s, "unit": args.dp_unit} if not math.isinf(s["epsilon"]) else s for s in out]
    return [dict(t) for t in dict.fromkeys(tuple(sorted(s.items())) for s in out)]


def run_cell(args, inputs: dict, seed: int, setting: dict | None) -> None:
    """One `mpu run` folder: Clean (setting None) or one protection setting."""
    from mpu.pipeline.experiment import ExperimentConfig, run_experiment

    folder = args.out / f"s{seed}" / ("clean" if setting is None else setting_name(setting))
    if (folder / "report.json").is_file():
        return
    data, models = inputs[args.forget_split]
    variants, server, dp = ["clean"], {}, {}
    if setting is not None:
        dp_cell = not math.isinf(setting["epsilon"])
        variants = ["dp" if dp_cell else "mpu"]
        server = {k: setting[k] for k in ("kappa", "residual", "copies")}
        if dp_cell:
            dp = {"clip": args.dp_clip, "epsilon": setting["epsilon"], "unit": args.dp_unit}
    cfg = ExperimentConfig(
        out=str(folder), data=data, models=str(models), forget_split=args.forget_split,
        methods=list(args.methods), variants=variants, server={**server, **key_values(args.server, "--server")},
        **({"dp": dp} if dp else {}), seed=seed, eval_max_new_tokens=args.max_new_tokens, eval_limit=args.eval_limit,
        progress=False, workers=args.workers, client=_client(args, setting),
        rounds_epochs=args.rounds_epochs,
    )  # fmt: skip
    run_experiment(cfg)


def _client(args, setting: dict | None) -> dict:
    """The client's settings of a cell: `--client`, and for the protection cells (not Clean)
    `--cell-client` on top (e.g. the larger step an emulator's frozen middle needs)."""
    client = key_values(args.client, "--client")
    if setting is not None:
        client.update(key_values(args.cell_client, "--cell-client"))
    return client


def collect(out: Path) -> list[dict]:
    """One row per (seed, setting, method): the leakage figures and the run's metrics."""
    rows, clean = [], {}
    for report in sorted(out.glob("s*/*/report.json")):
        rep = json.loads(report.read_text())
        seed, cell = int(report.parts[-3][1:]), report.parts[-2]
        timings = rep.get("timings_s", {})
        for r in rep["runs"]:
            if not r["method"]:
                continue
            s = {**r["summary"], "job_s": timings.get(f"unlearn/{r['method']}-{r['variant']}")}
            if cell == "clean":
                clean[(seed, r["method"])] = s
            else:
                rows.append({"seed": seed, "cell": cell, "method": r["method"], **s,
                             "privacy": r.get("privacy") or {}})  # fmt: skip
    for row in rows:
        c = clean.get((row["seed"], row["method"]))
        row["degradation"] = degradation(row, c) if c else float("nan")
        row["forget_gap"] = row["forget_Q_A_Prob"] - c["forget_Q_A_Prob"] if c else float("nan")
    return rows


def _mean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else float("nan")


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds per (setting, method)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["cell"], r["method"]), []).append(r)
    out = []
    for (cell, method), g in groups.items():
        p = lambda k: _mean(x["privacy"].get(k) for x in g)  # noqa: E731,B023
        out.append({"cell": cell, "method": method, "seeds": len(g),
                    "L_one": p("functional_one_copy"), "L_all": p("functional_all_with_base"),
                    "recall": p("token_recall_at_k"), "chance": p("token_chance_at_k"),
                    "mia": p("membership_auc"), "mia_cal": p("membership_auc_calibrated"),
                    "eps": p("dp_epsilon"), "forget": _mean(x["forget_Q_A_Prob"] for x in g),
                    "gap": _mean(x["forget_gap"] for x in g), "mu": _mean(x["model_utility"] for x in g),
                    "degradation": _mean(x["degradation"] for x in g),
                    "job_s": _mean(x["job_s"] for x in g)})  # fmt: skip
    return sorted(out, key=lambda s: (s["method"], _order(s["cell"])))


def _order(cell: str) -> tuple:
    parts = dict((p[0], float(p[1:])) for p in cell.split("-"))
    return (
        parts["k"],
        parts["r"],
        parts["m"],
        -parts.get("e", parts.get("E", math.inf)),
        "E" in parts,
    )


def table(summary: list[dict]) -> str:
    head = ("| method | setting | L one copy | L all + base | forget prob (Δ vs Clean) | "
            "degradation vs Clean | model utility | forget tokens / chance | MIA raw (calibrated) "
            "| ε | job s |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for s in summary:
        lines.append(f"| {s['method']} | {s['cell']} | {s['L_one']:.2f} | {s['L_all']:.2f} | "
                     f"{s['forget']:.3f} ({s['gap']:+.3f}) | {s['degradation']:+.1f}% | {s['mu']:.3f} | "
                     f"{s['recall']:.2f} / {s['chance']:.2f} | {s['mia']:.2f} ({s['mia_cal']:.2f}) | "
                     f"{'∞' if math.isnan(s['eps']) else format(s['eps'], '.3g')} | {s['job_s']:.0f} |")  # fmt: skip
    return "\n".join(lines)


def pareto(summary: list[dict]) -> list[dict]:
    """Settings no other setting beats on both leakage (max L) and |degradation|."""
    key = lambda s: (max(s["L_one"], s["L_all"]), abs(s["degradation"]))  # noqa: E731
    return [s for s in summary
            if not any(key(o)[0] <= key(s)[0] and key(o)[1] <= key(s)[1] and key(o) != key(s)
                       for o in summary if o["method"] == s["method"])]  # fmt: skip


def figure(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METHODS), figsize=(6 * len(METHODS), 4.5), squeeze=False)
    front = {id(s) for s in pareto(summary)}
    for ax, method in zip(axes[0], METHODS, strict=False):
        for s in (s for s in summary if s["method"] == method):
            x, y = max(s["L_one"], s["L_all"]), abs(s["degradation"])
            ax.scatter(x, y, c="tab:red" if id(s) in front else "tab:gray", s=30)
            ax.annotate(s["cell"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.axvline(0.5, ls=":", c="k", lw=0.8)
        ax.axhline(1.0, ls=":", c="k", lw=0.8)
        ax.set(title=method, xlabel="leakage: max(L one copy, L all copies + base)",
               ylabel="|degradation vs Clean| (%)", yscale="symlog")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def extend(args, inputs: dict, kappas: list[float]) -> list[float]:
    """κ × 3 while the most telling copy at the largest κ keeps L ≥ 0.5 (up to κ = 10, the
    largest the server accepts)."""
    while kappas[-1] * 3 <= 10:
        top = [s for s in summarise(collect(args.out)) if s["cell"].startswith(f"k{kappas[-1]:g}-")]
        if not top or _mean(s["L_one"] for s in top) < 0.5:
            break
        kappas.append(kappas[-1] * 3)
        run_all(args, inputs, [kappas[-1]])
    return kappas


def run_all(args, inputs: dict, kappas: list[float]) -> None:
    start = time.perf_counter()
    todo = [(seed, None) for seed in args.seeds]
    todo += [(seed, s) for s in settings(args, kappas) for seed in args.seeds]
    for i, (seed, s) in enumerate(todo, start=1):
        name = "clean" if s is None else setting_name(s)
        t = time.perf_counter()
        run_cell(args, inputs, seed, s)
        print(f"[{i}/{len(todo)}] s{seed}/{name} done in {time.perf_counter() - t:.0f} s "
              f"({time.perf_counter() - start:.0f} s elapsed)", flush=True)  # fmt: skip


def _arguments() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/frontier"))
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--forget-split", default="forget01")
    ap.add_argument("--kappas", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0])
    ap.add_argument("--residuals", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--copies", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--epsilons", type=float, nargs="+", default=[math.inf, 8.0, 2.0])
    ap.add_argument("--dp-clip", type=float, default=1.0, help="the DP cells' clip norm C")
    ap.add_argument(
        "--dp-unit",
        choices=["update", "example"],
        default="update",
        help="the DP cells' unit: the whole update, or one forget item (DP-SGD)",
    )
    ap.add_argument("--grid", choices=["star", "full"], default="star")
    ap.add_argument("--extend", action="store_true", help="raise κ until one copy's L < 0.5")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--models", help="a prepared models folder instead of the tiny ones")
    ap.add_argument("--data")
    ap.add_argument("--eval-limit", type=int)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--client", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--server", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--cell-client",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="client settings of the protection cells only (Clean keeps --client)",
    )
    ap.add_argument("--rounds-epochs", default="single", choices=["paper", "single"])
    ap.add_argument("--table-only", action="store_true")
    return ap.parse_args()


def main() -> None:
    args = _arguments()
    args.forget_splits = [args.forget_split]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not args.table_only:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        inputs = prepare(args)
        run_all(args, inputs, list(args.kappas))
        if args.extend:
            extend(args, inputs, list(args.kappas))
    summary = summarise(collect(args.out))
    text = table(summary)
    (args.out / "frontier.md").write_text(text + "\n")
    (args.out / "frontier.json").write_text(json.dumps(summary, indent=1) + "\n")
    figure(summary, args.out / "frontier.png")
    print(text)
    print(f"wrote {args.out / 'frontier.md'} and {args.out / 'frontier.png'} "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
