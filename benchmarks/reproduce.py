"""The paper's comparison, rerun: Clean vs Noised vs MPU for every unlearning method, over κ, m
and seeds, on the synthetic TOFU (docs/protocol.md; the claim: MPU stays within 1% of Clean at
κ = 0.1 and beats one noised copy).

Every cell is an `mpu run` folder under OUT (clean per seed; noised per κ and seed; MPU, and
its uniform-weights ablation, per κ, m and seed), so the grid is resumable: a finished
(method, variant) evaluation is never rerun, and an interrupted one resumes. The same base,
target and retain models (prepared once per forget split) and data serve every cell; a seed
changes the data order and the client's initial state, and every noised / MPU job draws a
fresh secret key.

    python benchmarks/reproduce.py --quick            # forget01, 8 methods, κ = 0.1, m = 2, 1 seed
    python benchmarks/reproduce.py --quick --seeds 0 1 2   # the same cells over three seeds
    python benchmarks/reproduce.py                    # the full grid (hours on 2 cores)
    python benchmarks/reproduce.py --table-only       # the tables and plot from what is done
    python benchmarks/reproduce.py --quick --methods NPO GradDiff --residuals 0.1 0.3 1
                                                      # + the residual-noise defence's cost

Writes OUT/results.md (per method and setting: forget Q_A prob, ROUGE, model utility, forget
quality as mean ± sd over seeds; MPU's and Noised's degradation relative to Clean) and
OUT/figure2.png.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

PAPER_METHODS = ["GradAscent", "GradDiff", "NPO", "SimNPO", "DPO", "UNDIAL", "SatImp", "WGA"]
EXTRAS = ["RMU", "CE-U"]
# (metric, lower is better) — the "average degradation" is over these three
DEGRADATION = [("forget_Q_A_Prob", True), ("forget_Q_A_ROUGE", True), ("model_utility", False)]
ORDER = [
    "clean",
    "noised",
    "mpu",
    "mpu_paper",
    "mpu_uniform",
]  # table order; "mpu ρ=…" rows follow mpu
SHOWN = ["forget_Q_A_Prob", "forget_Q_A_ROUGE", "model_utility", "forget_quality"]


def cells(args) -> list[tuple[str, dict]]:
    """(run folder, settings) of every cell of the grid, cheapest first."""
    out = []
    for split in args.forget_splits:
        for seed in args.seeds:
            out.append((f"{split}/s{seed}/clean", {"split": split, "seed": seed,
                                                   "variants": ["clean"]}))  # fmt: skip
            for kappa in args.kappas:
                if "noised" in args.only:
                    out.append((f"{split}/s{seed}/k{kappa:g}-noised",
                                {"split": split, "seed": seed, "kappa": kappa, "copies": 2,
                                 "variants": ["noised"]}))  # fmt: skip
                for m in args.copies if "mpu" in args.only else ():
                    variants = ["mpu"]
                    if args.ablation and (kappa, m) == (args.kappas[-1], args.copies[0]):
                        variants.append("mpu_uniform")
                    out.append((f"{split}/s{seed}/k{kappa:g}-m{m}",
                                {"split": split, "seed": seed, "kappa": kappa, "copies": m,
                                 "variants": variants}))  # fmt: skip
                if args.paper and "mpu" in args.only:  # the paper's MPU at its own m = 2
                    out.append((f"{split}/s{seed}/k{kappa:g}-m2-paper",
                                {"split": split, "seed": seed, "kappa": kappa, "copies": 2,
                                 "variants": ["mpu_paper"]}))  # fmt: skip
            for rho in args.residuals:  # the residual-noise defence's utility cost
                kappa, m = args.kappas[-1], args.copies[0]
                out.append((f"{split}/s{seed}/k{kappa:g}-m{m}-r{rho:g}",
                            {"split": split, "seed": seed, "kappa": kappa, "copies": m,
                             "residual": rho, "variants": ["mpu"]}))  # fmt: skip
            if args.equal_alphas:  # every copy at α = 1: MPU's noise level equals Noised's
                kappa, m = args.kappas[-1], args.copies[0]
                out.append((f"{split}/s{seed}/k{kappa:g}-m{m}-a1",
                            {"split": split, "seed": seed, "kappa": kappa, "copies": m,
                             "alphas": ",".join(["1"] * m), "variants": ["mpu"]}))  # fmt: skip
    return out


def run_cell(args, folder: str, cell: dict, inputs: dict) -> None:
    from mpu.pipeline.experiment import ExperimentConfig, run_experiment

    data, models = inputs[cell["split"]]
    report = args.out / folder / "report.json"
    methods = list(args.methods)
    if report.is_file():  # a rerun with other --methods keeps the cell's earlier methods
        done = [r["method"] for r in json.loads(report.read_text())["runs"] if r["method"]]
        if set(methods) <= set(done):
            return  # finished: nothing to run, the report stays as it is
        methods = [*dict.fromkeys(done + methods)]
    server = {"kappa": cell.get("kappa", 0.0), "copies": cell.get("copies", 3),
              "residual": cell.get("residual", 0.0), "alphas": cell.get("alphas", "auto"),
              **key_values(args.server, "--server")}  # fmt: skip
    cfg = ExperimentConfig(
        out=str(args.out / folder), data=data, models=str(models), forget_split=cell["split"],
        methods=methods, variants=cell["variants"], server=server, seed=cell["seed"],
        eval_max_new_tokens=args.max_new_tokens, eval_limit=args.eval_limit,
        progress=False, workers=args.workers, client=key_values(args.client, "--client"),
        rounds_epochs=args.rounds_epochs,
    )  # fmt: skip
    run_experiment(cfg)


def key_values(pairs: list[str], option: str) -> dict:
    """`--client epochs=5 lr=1e-5` / `--server angles=quarter_turn` as settings (values parsed as
    JSON where they parse — numbers, true/false, lists — else kept as text); a dotted key
    nests (`hparams.beta=0.2` → {"hparams": {"beta": 0.2}})."""
    out: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"{option} expects KEY=VALUE, got {pair!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = parsed
    return out


def prepare(args) -> dict:
    """The data and the base/target/retain models of each forget split (made once, cached)."""
    from mpu.pipeline.experiment import ExperimentConfig
    from mpu.pipeline.inputs import resolve_inputs

    inputs = {}
    for split in args.forget_splits:
        cfg = ExperimentConfig(forget_split=split, seed=0, progress=False)
        if args.models:
            cfg = ExperimentConfig(forget_split=split, seed=0, progress=False,
                                   models=args.models, data=args.data)  # fmt: skip
        inputs[split] = resolve_inputs(cfg, print)
    return inputs


# ---------------------------------------------------------------- tables
def collect(out: Path) -> list[dict]:
    """Every run row of every finished cell, with its κ, m, seed and split."""
    rows = []
    for report in sorted(out.glob("*/s*/*/report.json")):
        rep = json.loads(report.read_text())
        split, seed = report.parts[-4], int(report.parts[-3][1:])
        residual = re.search(r"-r([0-9.]+)$", report.parts[-2])
        equal = report.parts[-2].endswith("-a1")
        timings = rep.get("timings_s", {})
        for r in rep["runs"]:
            name = f"{r['method']}-{r['variant']}" if r["method"] else r["variant"]
            r = {**r, "unlearn_s": timings.get(f"unlearn/{name}"),
                 "eval_s": timings.get(f"eval/{name}")}  # fmt: skip
            if r["method"] and (residual or equal):  # an MPU cell with a setting of its own
                label = f"mpu ρ={float(residual[1]):g}" if residual else "mpu α≡1"
                rows.append({**r, "variant": label, "split": split, "seed": seed})
            elif r["method"]:
                rows.append({**r, "split": split, "seed": seed})
            elif r["variant"] in ("target", "retain"):
                rows.append({**r, "method": None, "split": split, "seed": seed})
    return rows


def _stats(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(sd: float, n: int, fmt: str) -> str:
    """ " ± sd" over seeds; nothing for a single seed (a spread of one value means nothing)."""
    return f" ± {sd:{fmt}}" if n > 1 else ""


def _wall(group: list[dict]) -> str:
    """Mean wall seconds of a row's runs: unlearning (server and client, every copy) + evaluation."""
    unlearn, evaluate = (_stats([r.get(k) for r in group])[0] for k in ("unlearn_s", "eval_s"))
    return "—" if unlearn != unlearn else f"{unlearn:.0f} + {evaluate:.0f}"


def degradation(x: dict, clean: dict) -> float:
    """Mean relative degradation (%) of `x` vs Clean over DEGRADATION's metrics (positive = worse)."""
    parts = []
    for key, lower_better in DEGRADATION:
        a, c = x.get(key), clean.get(key)
        if a is None or c is None or c == 0:
            continue
        parts.append(((a - c) if lower_better else (c - a)) / abs(c))
    return 100 * statistics.fmean(parts) if parts else float("nan")


def tables(rows: list[dict]) -> str:
    lines = []
    for split in sorted({r["split"] for r in rows}):
        sub = [r for r in rows if r["split"] == split]
        refs = {v: _stats([r["summary"].get("forget_Q_A_Prob") for r in sub if r["variant"] == v])[0]
                for v in ("target", "retain")}  # fmt: skip
        lines += [f"### {split}", "", f"Target forget Q_A prob {refs['target']:.3f}, retain model "
                  f"{refs['retain']:.3f}. Mean ± sd over seeds (no ± with one seed).", ""]  # fmt: skip
        lines += ["| method | variant | κ | m | seeds | " + " | ".join(SHOWN)
                  + " | degradation vs Clean | unlearn + eval (s) |",
                  "|---" * (7 + len(SHOWN)) + "|"]  # fmt: skip
        for method in sorted({r["method"] for r in sub if r["method"]}):
            mine = [r for r in sub if r["method"] == method]
            clean_rows = [r for r in mine if r["variant"] == "clean"]
            clean = {k: _stats([r["summary"].get(k) for r in clean_rows])[0] for k in SHOWN}
            keys = sorted({(r["variant"], r.get("kappa"), r.get("m")) for r in mine},
                          key=lambda v: (ORDER.index(v[0].split(" ")[0]), v[0], v[1] or 0,
                                         v[2] or 0))  # fmt: skip
            for variant, kappa, m in keys:
                group = [
                    r
                    for r in mine
                    if (r["variant"], r.get("kappa"), r.get("m")) == (variant, kappa, m)
                ]
                cells_ = []
                for k in SHOWN:
                    mean, sd = _stats([r["summary"].get(k) for r in group])
                    spread = _pm(sd, len(group), ".2g" if k == "forget_quality" else ".4f")
                    cells_.append(
                        f"{mean:.3g}{spread}" if k == "forget_quality" else f"{mean:.4f}{spread}"
                    )
                per_seed = [degradation(r["summary"], clean) for r in group]
                dmean, dsd = _stats(per_seed)
                deg = "—" if variant == "clean" else f"{dmean:+.2f}%{_pm(dsd, len(group), '.2f')}"
                lines.append(f"| {method} | {variant} | {kappa if kappa is not None else '—'} | "
                             f"{m if m is not None else '—'} | {len(group)} | " + " | ".join(cells_)
                             + f" | {deg} | {_wall(group)} |")  # fmt: skip
        lines.append("")
        lines += claims(sub)
    return "\n".join(lines)


OFFSET_METHODS = ["GradAscent", "GradDiff", "NPO", "UNDIAL"]  # the methods that move the model most


def _per_seed(rows: list[dict], method: str, test) -> dict[int, dict]:
    """{seed: summary} of the rows of `method` that pass `test`."""
    return {r["seed"]: r["summary"] for r in rows if r["method"] == method and test(r)}


def _private(variant: str, kappa: float, m: int | None = None):
    return lambda r: (r["variant"] == variant and r.get("kappa") == kappa
                      and (m is None or r.get("m") == m))  # fmt: skip


def _clean(r: dict) -> bool:
    return r["variant"] == "clean"


def _abs_degradations(rows, method, test) -> list[float]:
    """|degradation vs Clean| per seed, each seed against its own Clean run."""
    clean, mine = _per_seed(rows, method, _clean), _per_seed(rows, method, test)
    return [abs(degradation(mine[s], clean[s])) for s in sorted(mine) if s in clean]


def claims(rows: list[dict]) -> list[str]:
    """Per κ and m: is MPU within 1% of Clean, and is it nearer Clean than Noised (mean
    |degradation| over seeds, each seed against its own Clean run)?"""
    out = []
    methods = sorted({r["method"] for r in rows if r["method"]})
    settings = sorted({(r.get("kappa"), r.get("m")) for r in rows if r["variant"] == "mpu"})
    for kappa, m in settings:
        lines, nearer, beyond, within = [], 0, 0, 0
        for method in methods:
            mpu = _abs_degradations(rows, method, _private("mpu", kappa, m))
            noised = _abs_degradations(rows, method, _private("noised", kappa))
            paper = _abs_degradations(rows, method, _private("mpu_paper", kappa))
            if not mpu or not noised:
                continue
            (dm, sm), (dn, sn) = _stats(mpu), _stats(noised)
            within += dm <= 1
            nearer += dm < dn
            beyond += len(mpu) > 1 and len(noised) > 1 and dn - dm > sm + sn  # one seed: no spread
            extra = f"; paper's MPU {_stats(paper)[0]:.2f}%" if paper else ""
            lines.append(f"- {method}: MPU {dm:.2f}%{_pm(sm, len(mpu), '.2f')}, Noised "
                         f"{dn:.2f}%{_pm(sn, len(noised), '.2f')}{extra}")  # fmt: skip
        if lines:
            out += [f"κ = {kappa:g}, m = {m} (mean |degradation| vs Clean over seeds): MPU within "
                    f"1 % for {within} of {len(lines)}; nearer Clean than Noised for {nearer} of "
                    f"{len(lines)}, beyond the seed spread for {beyond}.", "", *lines, ""]  # fmt: skip
    return out + offsets(rows) + reach(rows)


def offsets(rows: list[dict]) -> list[str]:
    """The systematic offset: forget Q_A prob of MPU − Clean (mean over seeds), ours vs the
    paper's MPU, for the methods that move the model most."""
    out = []
    for kappa in sorted({r.get("kappa") for r in rows if r["variant"] == "mpu_paper"}):
        cells_ = []
        for method in OFFSET_METHODS:
            clean = _per_seed(rows, method, _clean)
            vals = {}
            for variant in ("mpu", "mpu_paper", "noised"):
                mine = _per_seed(rows, method, _private(variant, kappa))
                diffs = [mine[s]["forget_Q_A_Prob"] - clean[s]["forget_Q_A_Prob"]
                         for s in mine if s in clean]  # fmt: skip
                vals[variant] = _stats(diffs)[0] if diffs else float("nan")
            if vals["mpu"] == vals["mpu"]:
                cells_.append(f"{method} {vals['mpu']:+.4f} (paper's {vals['mpu_paper']:+.4f}, "
                              f"Noised {vals['noised']:+.4f})")  # fmt: skip
        if cells_:
            out += [f"Offset at κ = {kappa:g} (forget Q_A prob − Clean's, mean over seeds): "
                    + "; ".join(cells_) + ".", ""]  # fmt: skip
    return out


def reach(rows: list[dict]) -> list[str]:
    """κ reach: per method and variant, the largest κ at which |x − Clean| ≤ 0.1·|target −
    Clean| in forget Q_A prob (means over seeds) with model utility within 1 % of Clean's."""
    target = _stats([r["summary"]["forget_Q_A_Prob"] for r in rows if r["variant"] == "target"])[0]
    out = []
    for method in OFFSET_METHODS + [m for m in sorted({r["method"] for r in rows if r["method"]})
                                    if m not in OFFSET_METHODS]:  # fmt: skip
        clean_rows = [r["summary"] for r in rows if r["method"] == method and _clean(r)]
        if not clean_rows:
            continue
        cp = _stats([c["forget_Q_A_Prob"] for c in clean_rows])[0]
        cu = _stats([c["model_utility"] for c in clean_rows])[0]
        bits = []
        ms = sorted({r.get("m") for r in rows if r["variant"] == "mpu"})
        for variant, m in [("noised", None), *[("mpu", m) for m in ms], ("mpu_paper", None)]:
            ok = []
            for kappa in sorted({r.get("kappa") for r in rows if r["variant"] == variant}):
                mine = [r["summary"] for r in rows if r["method"] == method
                        and _private(variant, kappa, m)(r)]  # fmt: skip
                if not mine:
                    continue
                p = _stats([x["forget_Q_A_Prob"] for x in mine])[0]
                u = _stats([x["model_utility"] for x in mine])[0]
                share = abs(p - cp) / max(abs(target - cp), 1e-12)
                ok.append((kappa, share <= 0.1 and abs(u - cu) <= 0.01 * cu, share))
            if ok:
                reached = [k for k, good, _ in ok if good]
                shares = ", ".join(f"{k:g}: {sh:.2f}" for k, _, sh in ok)
                name = variant if m is None else f"mpu m={m}"
                bits.append(f"{name} {max(reached) if reached else '< ' + str(ok[0][0])} "
                            f"(|x − Clean|/|target − Clean| by κ: {shares})")  # fmt: skip
        if bits:
            out.append(f"- κ reach, {method}: " + "; ".join(bits))
    return ["κ reach (largest κ within 10 % of Clean's forgetting, utility within 1 %):", "",
            *out, ""] if out else []  # fmt: skip


def figure(rows: list[dict], path: Path) -> None:
    """Figure-2 style: per method, Clean / Noised / MPU (κ = 0.1, smallest m) for three metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = sorted({r["split"] for r in rows})[0]
    sub = [r for r in rows if r["split"] == split and r["method"]]
    methods = sorted({r["method"] for r in sub})
    mpu_m = max((r.get("m") for r in sub if r["variant"] == "mpu"), default=2)  # the default
    pick = {"Clean": lambda r: r["variant"] == "clean",
            "Noised (κ=0.1)": lambda r: r["variant"] == "noised" and r.get("kappa") == 0.1,
            f"MPU (κ=0.1, m={mpu_m})": lambda r: r["variant"] == "mpu" and r.get("kappa") == 0.1
            and r.get("m") == mpu_m,
            "paper's MPU (κ=0.1, m=2)": lambda r: r["variant"] == "mpu_paper"
            and r.get("kappa") == 0.1}  # fmt: skip
    metrics = [("forget_Q_A_Prob", "forget Q_A prob ↓"), ("forget_Q_A_ROUGE", "forget ROUGE ↓"),
               ("model_utility", "model utility ↑")]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    width = 0.8 / len(pick)
    for ax, (key, title) in zip(axes, metrics, strict=True):
        shown = []
        for i, (label, test) in enumerate(pick.items()):
            means, sds = zip(*[_stats([r["summary"].get(key) for r in sub if r["method"] == mth and test(r)])
                               for mth in methods], strict=True)  # fmt: skip
            xs = [j + (i - (len(pick) - 1) / 2) * width for j in range(len(methods))]
            ax.bar(xs, means, width, yerr=sds, label=label, capsize=2)
            shown += [m for m in means if m == m]
        target = _stats([r["summary"].get(key) for r in rows
                         if r["split"] == split and r["variant"] == "target"])[0]  # fmt: skip
        if target == target:
            ax.axhline(target, color="k", linestyle="--", linewidth=1, label="target (before)")
            shown.append(target)
        if shown:  # zoomed: the differences are small next to the values
            pad = max(0.1 * (max(shown) - min(shown)), 0.005)
            ax.set_ylim(min(shown) - pad, max(shown) + pad)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=8)
    fig.suptitle(f"Synthetic TOFU {split}: Clean vs Noised vs MPU", x=0.2)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="forget01, κ = 0.1, m = 3, seed 0, with the paper's MPU beside it "
                    "(--seeds, --kappas, --copies still apply)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    ap.add_argument("--methods", nargs="+")
    ap.add_argument("--extras", action="store_true", help="add RMU and CE-U")
    ap.add_argument("--forget-splits", nargs="+", default=["forget01", "forget10"])
    ap.add_argument("--kappas", type=float, nargs="+")
    ap.add_argument("--copies", type=int, nargs="+")
    ap.add_argument("--paper", action="store_true",
                    help="add the paper's MPU (m = 2, zero-sum noise, α = 1..2, harmonic, "
                    "continuous maps) at every κ: the baseline of the default")  # fmt: skip
    ap.add_argument("--seeds", type=int, nargs="+", help="default 0 1 2 (0 with --quick)")
    ap.add_argument("--no-ablation", dest="ablation", action="store_false")
    ap.add_argument("--equal-alphas", action="store_true",
                    help="an extra MPU cell with every α_k = 1 (largest κ, smallest m): the "
                    "noise of each copy equals Noised's, so only the cancellation differs")  # fmt: skip
    ap.add_argument("--residuals", type=float, nargs="*", default=[],
                    help="ρ of extra MPU cells with the residual-noise defence (largest κ, "
                    "smallest m): its utility cost")  # fmt: skip
    ap.add_argument(
        "--models", help="a prepared models folder (one forget split) instead of the tiny ones"
    )
    ap.add_argument("--data")
    ap.add_argument("--eval-limit", type=int)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds-epochs", default="paper", choices=["paper", "single"],
                    help="paper: each method's R×E split; single: one round")  # fmt: skip
    ap.add_argument("--client", nargs="*", default=[], metavar="KEY=VALUE",
                    help="client settings for every cell, e.g. epochs=5 lr=1e-5 (the experiment's "
                    "client.* keys)")  # fmt: skip
    ap.add_argument("--server", nargs="*", default=[], metavar="KEY=VALUE",
                    help="server settings for every noised / MPU cell, e.g. angles=quarter_turn "
                    "(the experiment's server.* keys; give such a run its own --out)")  # fmt: skip
    ap.add_argument("--only", nargs="+", default=["noised", "mpu"], choices=["noised", "mpu"],
                    help="which noised / MPU cells to run (Clean always runs: it is the reference)")  # fmt: skip
    ap.add_argument("--table-only", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.forget_splits, args.paper = ["forget01"], True
    args.kappas = args.kappas or ([0.1] if args.quick else [0.1, 0.3, 1.0])
    args.copies = args.copies or ([3] if args.quick else [2, 3, 4])
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.methods = args.methods or PAPER_METHODS + (EXTRAS if args.extras else [])
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not args.table_only:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        inputs = prepare(args)
        todo = cells(args)
        for i, (folder, cell) in enumerate(todo, start=1):
            t = time.perf_counter()
            print(f"[{i}/{len(todo)}] {folder} ({', '.join(cell['variants'])})", flush=True)
            run_cell(args, folder, cell, inputs)
            print(f"[{i}/{len(todo)}] {folder} done in {time.perf_counter() - t:.0f} s "
                  f"({time.perf_counter() - start:.0f} s elapsed)", flush=True)  # fmt: skip
    rows = collect(args.out)
    text = tables(rows)
    (args.out / "results.md").write_text(text + "\n")
    figure(rows, args.out / "figure2.png")
    print(text)
    print(f"wrote {args.out / 'results.md'} and {args.out / 'figure2.png'} "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
