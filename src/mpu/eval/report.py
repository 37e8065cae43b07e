"""Render experiment run directories (`RUN_DIR/report.json`, schema "mpu-report/1") into
`report.md` and a self-contained `report.html` (plots embedded as base64 PNG).

Plots: per-method bars for the clean / noised / MPU variants (with the target and retain
models as reference lines), forget quality vs model utility, and κ / m sweep lines when the
runs vary them. Several RUN_DIRs are combined into one report (e.g. one per κ of a sweep).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpu.errors import DataError

SCHEMA = "mpu-report/1"
VARIANTS = ("target", "retain", "clean", "noised", "mpu")
VARIANT_COLOURS = {
    "target": "#7f7f7f",
    "retain": "#2ca02c",
    "clean": "#1f77b4",
    "noised": "#ff7f0e",
    "mpu": "#d62728",
}
# headline metrics first, with the direction that is better after unlearning (METRICS.md §8)
DIRECTION = {
    "forget_quality": "↑",
    "model_utility": "↑",
    "forget_truth_ratio": "≈ retain",
    "forget_Q_A_Prob": "↓",
    "forget_Q_A_ROUGE": "↓",
    "privleak": "→ 0",
    "extraction_strength": "↓",
    "forget_knowmem_ROUGE": "↓",
    "retain_knowmem_ROUGE": "↑",
    "forget_verbmem_ROUGE": "↓",
}
BAR_METRICS = ("forget_quality", "model_utility", "forget_Q_A_ROUGE", "privleak")


def load_run_dir(run_dir: str | Path) -> dict[str, Any]:
    """Read and check `RUN_DIR/report.json`; DataError naming the file and the fault."""
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise DataError(f"{path}: not found (is {run_dir} an experiment run directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise DataError(f"{path}: 'schema' must be {SCHEMA!r}")
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise DataError(f"{path}: 'runs' must be a non-empty list")
    for i, run in enumerate(runs):
        if not isinstance(run, dict) or not isinstance(run.get("summary"), dict):
            raise DataError(f"{path}: runs[{i}] needs a 'summary' object of metric -> value")
        if run.get("variant") not in VARIANTS:
            raise DataError(f"{path}: runs[{i}] variant {run.get('variant')!r} not in {VARIANTS}")
        run.setdefault("method", "")
        run.setdefault("m", None)
        run.setdefault("kappa", None)
        run["_dir"] = str(run_dir)
    return data


def _num(x: Any) -> float | None:
    return (
        float(x)
        if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
        else None
    )


def _fmt(x: Any) -> str:
    v = _num(x)
    if v is None:
        return "—"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.2e}"
    return f"{v:.4f}"


def _metric_keys(runs: Sequence[dict]) -> list[str]:
    keys = {k for r in runs for k in r["summary"]}
    return [k for k in DIRECTION if k in keys] + sorted(keys - set(DIRECTION))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bars(runs: Sequence[dict]) -> str | None:
    """Per-method grouped bars (clean / noised / MPU) per headline metric; target/retain dashed."""
    import matplotlib.pyplot as plt

    metrics = [m for m in BAR_METRICS if any(_num(r["summary"].get(m)) is not None for r in runs)]
    unl = [r for r in runs if r["variant"] in ("clean", "noised", "mpu")]
    if not metrics or not unl:
        return None
    methods = sorted({r["method"] for r in unl})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    width = 0.8 / 3
    for ax, metric in zip(axes[0], metrics, strict=True):
        for j, variant in enumerate(("clean", "noised", "mpu")):
            xs, ys = [], []
            for i, method in enumerate(methods):
                vals = [
                    _num(r["summary"].get(metric))
                    for r in unl
                    if r["method"] == method and r["variant"] == variant
                ]
                vals = [v for v in vals if v is not None]
                if vals:
                    xs.append(i + (j - 1) * width)
                    ys.append(sum(vals) / len(vals))
            ax.bar(
                xs,
                ys,
                width,
                label=variant.upper() if variant == "mpu" else variant.capitalize(),
                color=VARIANT_COLOURS[variant],
            )
        for variant in ("target", "retain"):
            vals = [_num(r["summary"].get(metric)) for r in runs if r["variant"] == variant]
            vals = [v for v in vals if v is not None]
            if vals:
                ax.axhline(vals[0], ls="--", lw=1.2, color=VARIANT_COLOURS[variant], label=variant)
        if metric == "forget_quality":
            ax.set_yscale("log")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_title(f"{metric} ({DIRECTION.get(metric, '')})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _scatter(runs: Sequence[dict]) -> str | None:
    """Forget quality (log) against model utility, one point per run."""
    import matplotlib.pyplot as plt

    pts = [
        (r, _num(r["summary"].get("model_utility")), _num(r["summary"].get("forget_quality")))
        for r in runs
    ]
    pts = [(r, x, y) for r, x, y in pts if x is not None and y is not None and y > 0]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    markers = "osD^v<>pX*"
    # target/retain rows carry method None: sort them after the named methods
    methods = sorted({r["method"] for r, _, _ in pts}, key=lambda m: (m is None, str(m)))
    seen = set()
    for r, x, y in pts:
        label = r["variant"] if r["variant"] not in seen else None
        seen.add(r["variant"])
        ax.scatter(
            x,
            y,
            s=60,
            color=VARIANT_COLOURS[r["variant"]],
            marker=markers[methods.index(r["method"]) % len(markers)],
            label=label,
            edgecolor="black",
            linewidth=0.5,
        )
        if r["variant"] not in ("target", "retain"):
            ax.annotate(r["method"], (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_yscale("log")
    ax.set_xlabel("model utility (↑)")
    ax.set_ylabel("forget quality (↑, log)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _sweep(runs: Sequence[dict], param: str) -> str | None:
    """Metric vs κ or m, one line per (method, variant), when a series has ≥ 2 distinct values."""
    import matplotlib.pyplot as plt

    series: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        if _num(r.get(param)) is not None and r["variant"] in ("noised", "mpu"):
            series.setdefault((r["method"], r["variant"]), []).append(r)
    series = {k: v for k, v in series.items() if len({_num(r[param]) for r in v}) >= 2}
    metrics = [
        m
        for m in ("forget_quality", "model_utility")
        if any(_num(r["summary"].get(m)) is not None for v in series.values() for r in v)
    ]
    if not series or not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for (method, variant), rs in sorted(series.items()):
            pts = sorted((_num(r[param]), _num(r["summary"].get(metric))) for r in rs)
            pts = [(x, y) for x, y in pts if y is not None]
            ls = "-" if variant == "mpu" else ":"
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                ls,
                marker="o",
                label=f"{method} {variant}",
            )
        for variant in ("target", "retain"):
            vals = [_num(r["summary"].get(metric)) for r in runs if r["variant"] == variant]
            if vals and vals[0] is not None:
                ax.axhline(vals[0], ls="--", lw=1, color=VARIANT_COLOURS[variant], label=variant)
        if metric == "forget_quality":
            ax.set_yscale("log")
        xs = [_num(r[param]) for rs in series.values() for r in rs]
        if min(xs) > 0 and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
        ax.set_xlabel("κ (noise scale)" if param == "kappa" else "m (copies)")
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _rows(runs: Sequence[dict], keys: Sequence[str]) -> list[list[str]]:
    order = {v: i for i, v in enumerate(VARIANTS)}
    runs = sorted(
        runs,
        key=lambda r: (
            order[r["variant"]] > 1,
            r["method"],
            order[r["variant"]],
            _num(r["kappa"]) or 0,
            _num(r["m"]) or 0,
        ),
    )
    out = []
    for r in runs:
        m = "—" if r["m"] is None else str(r["m"])
        kappa = "—" if r["kappa"] is None else f"{r['kappa']:g}"
        out.append(
            [r["method"] or "—", r["variant"], m, kappa, *(_fmt(r["summary"].get(k)) for k in keys)]
        )
    return out


def _collect(run_dirs: Sequence[str | Path]) -> tuple[list[dict], list[dict]]:
    if not run_dirs:
        raise DataError("no run directory given")
    reports = [load_run_dir(d) for d in run_dirs]
    runs, seen = [], set()
    for rep in reports:  # a sweep repeats the target / retain rows in every run dir: keep one
        for run in rep["runs"]:
            key = json.dumps(
                [run["method"], run["variant"], run["m"], run["kappa"], run["summary"]],
                sort_keys=True,
                default=str,
            )
            if key not in seen:
                seen.add(key)
                runs.append(run)
    benchmarks = {r.get("benchmark") for r in reports}
    if len(benchmarks) > 1:
        raise DataError(
            f"cannot combine run directories of different benchmarks: {sorted(map(str, benchmarks))}"
        )
    return reports, runs


def _title(reports: Sequence[dict]) -> str:
    titles = [r.get("title") or Path(r["runs"][0]["_dir"]).name for r in reports]
    return titles[0] if len(titles) == 1 else f"{titles[0]} (+{len(titles) - 1} more runs)"


def _plots(runs: Sequence[dict]) -> list[tuple[str, str, str]]:
    """(file stem, caption, base64 PNG) of every plot the runs support."""
    candidates = [
        (
            "bars",
            "Per-method results: Clean vs Noised vs MPU, mean over runs (dashed: target and retain models)",
            _bars(runs),
        ),
        ("fq_vs_mu", "Forget quality vs model utility (top right is best)", _scatter(runs)),
        ("sweep_kappa", "Sweep over κ", _sweep(runs, "kappa")),
        ("sweep_m", "Sweep over m", _sweep(runs, "m")),
    ]
    return [(stem, cap, png) for stem, cap, png in candidates if png]


def render_markdown(
    reports: Sequence[dict], runs: Sequence[dict], plots: Sequence[tuple[str, str, str]]
) -> str:
    """Markdown report; plots are written beside it as PNG files and linked."""
    keys = _metric_keys(runs)
    head = [
        "method",
        "variant",
        "m",
        "κ",
        *(f"{k} ({DIRECTION[k]})" if k in DIRECTION else k for k in keys),
    ]
    lines = [
        f"# {_title(reports)}",
        "",
        f"Benchmark: **{reports[0].get('benchmark', '?')}** — {len(runs)} runs from {len(reports)} run director{'y' if len(reports) == 1 else 'ies'}.",
        "",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(runs, keys)]
    lines.append("")
    for stem, caption, _ in plots:
        lines += [f"![{caption}]({stem}.png)", "", f"*{caption}*", ""]
    for rep in reports:
        lines += [
            f"## Configuration: {rep['runs'][0]['_dir']}",
            "",
            "```json",
            json.dumps(rep.get("config", {}), indent=2, sort_keys=True, default=str),
            "```",
            "",
        ]
    return "\n".join(lines)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em}table{border-collapse:collapse;font-size:13px;margin:12px 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+4){text-align:left}figure{margin:12px 0}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:13px;color:#555}pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}
tr.target td{background:#f2f2f2}tr.retain td{background:#eef8ee}"""


def render_html(
    reports: Sequence[dict], runs: Sequence[dict], plots: Sequence[tuple[str, str, str]]
) -> str:
    """Self-contained HTML: inline CSS, plots as data: URIs, no scripts, no external requests."""
    e = html.escape
    keys = _metric_keys(runs)
    head = [
        "method",
        "variant",
        "m",
        "κ",
        *(f"{k} ({DIRECTION[k]})" if k in DIRECTION else k for k in keys),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(_title(reports))}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(_title(reports))}</h1>",
        f"<p>Benchmark: <b>{e(str(reports[0].get('benchmark', '?')))}</b> — {len(runs)} runs.</p>",
    ]
    for stem, caption, png in plots:
        parts.append(
            f'<figure id="{stem}"><img alt="{e(caption)}" src="data:image/png;base64,{png}"><figcaption>{e(caption)}</figcaption></figure>'
        )
    parts.append(
        "<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>"
    )
    for row in _rows(runs, keys):
        parts.append(
            f'<tr class="{e(row[1])}">' + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>"
        )
    parts.append("</tbody></table>")
    for rep in reports:
        cfg = json.dumps(rep.get("config", {}), indent=2, sort_keys=True, default=str)
        parts.append(
            f"<details><summary>Configuration: {e(rep['runs'][0]['_dir'])}</summary><pre>{e(cfg)}</pre></details>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def render_report(
    run_dirs: Sequence[str | Path], out_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """Render `report.md` (+ PNGs) and a self-contained `report.html`.

    Several run directories are combined into one report; it goes to `out_dir`, or, without
    one, into every run directory. Returns the paths of the (first) written pair.
    """
    import matplotlib

    matplotlib.use("Agg")
    reports, runs = _collect(run_dirs)
    plots = _plots(runs)
    md, page = render_markdown(reports, runs, plots), render_html(reports, runs, plots)
    targets = [Path(out_dir)] if out_dir is not None else [Path(d) for d in run_dirs]
    written: list[tuple[Path, Path]] = []
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        for stem, _, png in plots:
            (folder / f"{stem}.png").write_bytes(base64.b64decode(png))
        (folder / "report.md").write_text(md, encoding="utf-8")
        (folder / "report.html").write_text(page, encoding="utf-8")
        written.append((folder / "report.md", folder / "report.html"))
    return written[0]
