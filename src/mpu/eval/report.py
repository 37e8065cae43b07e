"""Render experiment run directories (`RUN_DIR/report.json`, schema "mpu-report/1") into
`report.md` and a self-contained `report.html`.

A report explains itself: what was run (the Clean / Noised / MPU variants and the settings),
what it shows (sentences computed from the numbers, `mpu.eval.findings`), what each metric
measures and which way is better, the table, the plots (`mpu.eval.plots`; inline SVG in the
HTML, PNG beside the Markdown) and the time per phase. Several RUN_DIRs are combined into one
report; runs with different settings stay apart (labelled with their κ, m and whatever else
differs), replicate seeds are averaged with their spread.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpu.errors import DataError
from mpu.eval.findings import METRICS, VARIANTS, findings, what_was_run
from mpu.eval.findings import finite_number as _num

SCHEMA = "mpu-report/1"
# config keys that never make two runs "different settings" (bookkeeping, or shown as κ / m)
_NOT_SETTINGS = {
    "out",
    "seed",
    "progress",
    "workers",
    "threads",
    "keep_models",
    "kappa",
    "copies",
    "m",
}


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


def _fmt(x: Any) -> str:
    v = _num(x)
    if v is None:
        return "—"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
        return f"{v:.2e}"
    return f"{v:.4f}"


def _metric_keys(runs: Sequence[dict]) -> list[str]:
    keys = {k for r in runs for k in r["summary"]}
    return [k for k in METRICS if k in keys] + sorted(keys - set(METRICS))


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _label_settings(reports: Sequence[dict]) -> None:
    """Give each run a `setting` label naming the config keys in which its run dir differs."""
    flats = [_flat(rep.get("config", {})) for rep in reports]
    keys = {k for f in flats for k in f if k.rsplit(".", 1)[-1] not in _NOT_SETTINGS}
    differing = sorted(
        k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1
    )
    differing = [k for k in differing if not k.startswith(("data", "models", "timings"))][:3]
    for rep, flat in zip(reports, flats, strict=True):
        label = ", ".join(f"{k.rsplit('.', 1)[-1]}={flat.get(k)}" for k in differing)
        for run in rep["runs"]:
            run["setting"] = label if run["variant"] in ("clean", "noised", "mpu") else ""


def _rows(runs: Sequence[dict], keys: Sequence[str]) -> list[list[str]]:
    order = {v: i for i, v in enumerate(VARIANTS)}
    runs = sorted(
        runs,
        key=lambda r: (order[r["variant"]] > 1, r["method"], order[r["variant"]],
                       _num(r["kappa"]) or 0, _num(r["m"]) or 0, r.get("setting", "")),
    )  # fmt: skip
    out = []
    for r in runs:
        m = "—" if r["m"] is None else str(r["m"])
        kappa = "—" if r["kappa"] is None else f"{r['kappa']:g}"
        variant = r["variant"] + (f" ({r['setting']})" if r.get("setting") else "")
        out.append(
            [r["method"] or "—", variant, m, kappa, *(_fmt(r["summary"].get(k)) for k in keys)]
        )
    return out


def _collect(run_dirs: Sequence[str | Path]) -> tuple[list[dict], list[dict]]:
    if not run_dirs:
        raise DataError("no run directory given")
    reports = [load_run_dir(d) for d in run_dirs]
    _label_settings(reports)
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


def _plots(runs: Sequence[dict]) -> list[tuple[str, str, bytes, bytes]]:
    """(file stem, caption, PNG, SVG) of every plot the runs support."""
    from mpu.eval import plots

    candidates = [
        ("bars", "Per-method results: one bar per variant and setting (dashed: target and "
         "retain models; error bars: spread over seeds)", plots.bars(runs)),
        ("fq_vs_mu", "Forget quality vs model utility: top right is best (colour: variant, "
         "shape: method)", plots.scatter(runs)),
        ("sweep_kappa", "Sweep over κ", plots.sweep(runs, "kappa")),
        ("sweep_m", "Sweep over m", plots.sweep(runs, "m")),
    ]  # fmt: skip
    from mpu.eval.curves_plot import curves
    from mpu.eval.frontier_plot import frontier

    candidates.append(("frontier", "Privacy against forgetting: each audited run's functional "
                       "leakage (1 = a clone of θ) against its forget probability's distance to "
                       "Clean's", frontier(runs)))  # fmt: skip

    candidates += _impact_maps(runs)
    for method in sorted({r["method"] for r in runs if r.get("method")}):
        candidates.append((f"curves_{method}", f"Training curves of {method}: forget and retain "
                           "loss per optimizer step of every client run (Clean, Noised, each MPU "
                           "copy)", curves(runs, method)))  # fmt: skip
    return [
        (stem, cap, plots.encode(fig, "png"), plots.encode(fig, "svg"))
        for stem, cap, fig in candidates
        if fig is not None
    ]


def _impact_maps(runs: Sequence[dict]) -> list[tuple[str, str, Any]]:
    """The impact map of each run directory that has one (`impact=true`, OUT/impact)."""
    from mpu.eval.impact_map import heatmap, read_summary

    out = []
    for i, run_dir in enumerate(sorted({r["_dir"] for r in runs if r.get("_dir")})):
        path = Path(run_dir) / "impact" / "summary.json"
        if not path.is_file():
            continue
        summary = read_summary(path)
        for score, s in sorted(summary.get("scores", {}).items()):
            split = summary.get("forget_split", "forget set")
            caption = (f"Where {split} lives in the target: per decoder block and parameter "
                       f"role, how over-represented the top {100 * summary['top_fraction']:g} % "
                       f"of parameters by {score} importance (relative to retain) is (1 = "
                       "chance; docs/methods.md)")  # fmt: skip
            out.append((f"impact_{i}_{score}", caption, heatmap(s, f"{split}: {score}")))
    return out


def _timings(reports: Sequence[dict]) -> list[tuple[str, float]]:
    """Seconds per phase, summed over run directories: inputs, evaluations, unlearning, total."""
    total: dict[str, float] = {}
    for rep in reports:
        for key, seconds in (rep.get("timings_s") or {}).items():
            if isinstance(seconds, int | float):
                phase = key.split("/", 1)[0]
                total[phase] = total.get(phase, 0.0) + float(seconds)
    return sorted(
        total.items(),
        key=lambda kv: (
            ("inputs", "eval", "unlearn", "total").index(kv[0])
            if kv[0] in ("inputs", "eval", "unlearn", "total")
            else 9
        ),
    )


PRIVACY_HEAD = ["method", "variant", "m", "κ", "one copy aligned to the base",
                "all copies + base", "all copies, true maps", "L one copy", "L all copies + base",
                "forget tokens in the update", "membership AUC of the update (calibrated)",
                "DP ε", "signed transcript"]  # fmt: skip
PRIVACY_NOTE = (
    "What a curious party recovers, measured on round 1 of each run (docs/threat-model.md). "
    "Client's view: the distance of its best reconstruction θ̂ to the server's weights θ, "
    "relative to what fine-tuning changed (‖θ̂ − θ‖ / ‖θ − θ_base‖; 0% = θ exactly, 100% = no "
    "closer than the public base). 'All copies, true maps' is the floor of any attack: with "
    "the maps undone the copies determine θ, so only residual noise (server.residual) keeps it "
    "above 0. Server's view: the share of the forget set's tokens among the most-moved "
    "embedding rows of the client's update (and the chance level), and how well the update's "
    "loss changes separate forget from holdout items (0.5 = not at all; in brackets, after "
    "taking out what a random update of the same size would do). Functional leakage L: how much "
    "of θ's fine-tuned knowledge a model computes, (s(M) − s(base)) / (s(θ) − s(base)) with s "
    "the answer probability on θ's fine-tuning data: 1 is a clone of θ, 0 nothing beyond the "
    "public base; 'one copy' is the most telling copy as published, run as it is."
)


def _pct(x: Any) -> str:
    return "—" if _num(x) is None else f"{100 * x:.1f}%"


def _fixed(x: Any) -> str:
    return "—" if _num(x) is None else f"{x:.2f}"


def _privacy_rows(runs: Sequence[dict]) -> list[list[str]]:
    out = []
    for r in runs:
        p = r.get("privacy")
        if not p:
            continue
        tokens = "—"
        if _num(p.get("token_recall_at_k")) is not None:
            tokens = f"{p['token_recall_at_k']:.2f} (chance {p['token_chance_at_k']:.2f})"
        eps = (
            "—"
            if _num(p.get("dp_epsilon")) is None
            else f"{p['dp_epsilon']:.3g} (δ={p['dp_delta']:g})"
        )
        t = p.get("transcript")
        signed = f"verified, {t['entries']} entries" if t else "—"
        mia = "—" if _num(p.get("membership_auc")) is None else f"{p['membership_auc']:.2f}"
        if _num(p.get("membership_auc_calibrated")) is not None:
            mia += f" ({p['membership_auc_calibrated']:.2f})"
        out.append([r["method"] or "—", r["variant"], "—" if r["m"] is None else str(r["m"]),
                    "—" if r["kappa"] is None else f"{r['kappa']:g}", _pct(p.get("one_copy_aligned")),
                    _pct(p.get("all_copies_with_base")), _pct(p.get("ideal_all_copies")),
                    _fixed(p.get("functional_one_copy")), _fixed(p.get("functional_all_with_base")),
                    tokens, mia, eps,
                    signed])  # fmt: skip
    return out


def _head(keys: Sequence[str]) -> list[str]:
    return ["method", "variant", "m", "κ", *keys]


def render_markdown(reports: Sequence[dict], runs: Sequence[dict], plots: Sequence[tuple]) -> str:
    """Markdown report; plots are written beside it as PNG files and linked."""
    keys = _metric_keys(runs)
    lines = [f"# {_title(reports)}", "",
             f"Benchmark: **{reports[0].get('benchmark', '?')}** — {len(runs)} runs from "
             f"{len(reports)} run director{'y' if len(reports) == 1 else 'ies'}.", "",
             "## What was run", ""]  # fmt: skip
    lines += [f"- {line}" for line in what_was_run(reports, runs)] + ["", "## What it shows", ""]
    lines += [f"- {line}" for line in findings(runs) or ["No unlearning runs to compare."]]
    lines += ["", "## Metrics", "", "| metric | what it measures | better |", "|---|---|---|"]
    lines += [f"| {k} | {METRICS[k][0]} | {METRICS[k][1]} |" for k in keys if k in METRICS]
    lines += [
        "",
        "## Results",
        "",
        "| " + " | ".join(_head(keys)) + " |",
        "|" + "---|" * len(_head(keys)),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(runs, keys)]
    lines.append("")
    for stem, caption, _, _ in plots:
        lines += [f"![{caption}]({stem}.png)", "", f"*{caption}*", ""]
    privacy = _privacy_rows(runs)
    if privacy:
        lines += ["## What the protocol protected", "", PRIVACY_NOTE, "",
                  "| " + " | ".join(PRIVACY_HEAD) + " |", "|" + "---|" * len(PRIVACY_HEAD)]  # fmt: skip
        lines += ["| " + " | ".join(row) + " |" for row in privacy] + [""]
    timings = _timings(reports)
    if timings:
        lines += ["## Time per phase", "", "| phase | seconds |", "|---|---|"]
        lines += [f"| {phase} | {sec:.0f} |" for phase, sec in timings] + [""]
    for rep in reports:
        lines += [f"## Configuration: {rep['runs'][0]['_dir']}", "", "```json",
                  json.dumps(rep.get("config", {}), indent=2, sort_keys=True, default=str), "```", ""]  # fmt: skip
    return "\n".join(lines)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.4em}table{border-collapse:collapse;font-size:13px;margin:12px 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f3f3f3}td:nth-child(-n+4){text-align:left}
table.metrics td{text-align:left}figure{margin:12px 0}figure svg{max-width:100%;height:auto}
figcaption{font-size:13px;color:#555}pre{background:#f7f7f7;padding:8px;font-size:12px;overflow:auto}
tr.target td{background:#f2f2f2}tr.retain td{background:#eef8ee}li{margin:4px 0}"""


def _svg_inline(svg: bytes) -> str:
    text = svg.decode("utf-8")
    return text[text.index("<svg") :]


def render_html(reports: Sequence[dict], runs: Sequence[dict], plots: Sequence[tuple]) -> str:
    """Self-contained HTML: inline CSS and SVG plots, no scripts, no external requests."""
    e = html.escape
    keys = _metric_keys(runs)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(_title(reports))}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(_title(reports))}</h1>",
        f"<p>Benchmark: <b>{e(str(reports[0].get('benchmark', '?')))}</b> — {len(runs)} runs.</p>",
        '<section id="what-was-run"><h2>What was run</h2><ul>',
        *(f"<li>{e(line)}</li>" for line in what_was_run(reports, runs)),
        '</ul></section><section id="what-it-shows"><h2>What it shows</h2><ul>',
        *(f"<li>{e(line)}</li>" for line in findings(runs) or ["No unlearning runs to compare."]),
        '</ul></section><section id="metrics"><h2>Metrics</h2><table class="metrics"><thead>'
        "<tr><th>metric</th><th>what it measures</th><th>better</th></tr></thead><tbody>",
        *(
            f'<tr data-metric="{e(k)}"><td>{e(k)}</td><td>{e(METRICS[k][0])}</td><td>{e(METRICS[k][1])}</td></tr>'
            for k in keys
            if k in METRICS
        ),
        '</tbody></table></section><section id="results"><h2>Results</h2><table><thead><tr>',
        *(f"<th>{e(h)}</th>" for h in _head(keys)),
        "</tr></thead><tbody>",
        *(
            f'<tr class="{e(row[1].split(" ")[0])}">'
            + "".join(f"<td>{e(c)}</td>" for c in row)
            + "</tr>"
            for row in _rows(runs, keys)
        ),
        "</tbody></table></section>",
    ]
    for stem, caption, _, svg in plots:
        parts.append(
            f'<figure id="{stem}">{_svg_inline(svg)}<figcaption>{e(caption)}</figcaption></figure>'
        )
    privacy = _privacy_rows(runs)
    if privacy:
        parts.append('<section id="privacy"><h2>What the protocol protected</h2>'
                     f"<p>{e(PRIVACY_NOTE)}</p><table><thead><tr>")  # fmt: skip
        parts += [f"<th>{e(h)}</th>" for h in PRIVACY_HEAD] + ["</tr></thead><tbody>"]
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in privacy]
        parts.append("</tbody></table></section>")
    timings = _timings(reports)
    if timings:
        parts.append('<section id="timings"><h2>Time per phase</h2><table><thead><tr><th>phase</th>'
                     "<th>seconds</th></tr></thead><tbody>")  # fmt: skip
        parts += [f"<tr><td>{e(p)}</td><td>{sec:.0f}</td></tr>" for p, sec in timings]
        parts.append("</tbody></table></section>")
    for rep in reports:
        cfg = json.dumps(rep.get("config", {}), indent=2, sort_keys=True, default=str)
        parts.append(
            f"<details><summary>Configuration: {e(rep['runs'][0]['_dir'])}</summary><pre>{e(cfg)}</pre></details>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _write(path: Path, data: bytes) -> None:
    """Atomic, world-readable like every other report file (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


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
        for stem, _, png, _ in plots:
            _write(folder / f"{stem}.png", png)
        _write(folder / "report.md", md.encode("utf-8"))
        _write(folder / "report.html", page.encode("utf-8"))
        written.append((folder / "report.md", folder / "report.html"))
    return written[0]
