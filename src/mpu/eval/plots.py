"""The report's figures: per-method bars, forget quality vs model utility, κ / m sweeps.

Runs with different settings are kept apart (one bar or point per setting, labelled with its κ
and m); replicate runs of one setting (seeds) are averaged with their spread as error bars.
Point labels are placed so that no two overlap (greedy search over offsets, using the text
extents matplotlib itself computes), and every label is its own SVG group (`id="label-N"`),
so a browser can check the layout it renders.
"""

from __future__ import annotations

import io
import math
import statistics
from collections.abc import Sequence

from mpu.eval.findings import METRICS, group_key, setting_label
from mpu.eval.findings import finite_number as _num

VARIANT_COLOURS = {
    "target": "#7f7f7f",
    "retain": "#2ca02c",
    "clean": "#1f77b4",
    "noised": "#ff7f0e",
    "mpu": "#d62728",
}
BAR_METRICS = ("forget_quality", "model_utility", "forget_Q_A_Prob", "privleak")
MARKERS = "osD^v<>pX*"
LABEL_SIZE = 8


def _groups(runs: Sequence[dict], variants=("clean", "noised", "mpu")) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["variant"] in variants:
            out.setdefault(group_key(r), []).append(r)
    return out


def _stat(rows: Sequence[dict], metric: str) -> tuple[float | None, float | None]:
    vals = [v for v in (_num(r["summary"].get(metric)) for r in rows) if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def bars(runs: Sequence[dict]):
    """Grouped bars per method: one bar per (variant, setting); target/retain dashed lines."""
    import matplotlib.pyplot as plt

    metrics = [m for m in BAR_METRICS if any(_num(r["summary"].get(m)) is not None for r in runs)]
    groups = _groups(runs)
    if not metrics or not groups:
        return None
    methods = sorted({k[0] for k in groups})
    series = sorted(
        {k[1:] for k in groups},
        key=lambda s: (("clean", "noised", "mpu").index(s[0]), s[2] or 0, s[1] or 0, s[3]),
    )
    width = 0.8 / len(series)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.9), squeeze=False)
    shades = {}
    for s in series:  # several settings of one variant: lighter shades of its colour
        same = [t for t in series if t[0] == s[0]]
        shades[s] = 1.0 - 0.45 * same.index(s) / max(1, len(same) - 1) if len(same) > 1 else 1.0
    for ax, metric in zip(axes[0], metrics, strict=True):
        for j, s in enumerate(series):
            xs, ys, es = [], [], []
            for i, method in enumerate(methods):
                mean, spread = _stat(groups.get((method, *s), []), metric)
                if mean is not None:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(mean)
                    es.append(spread or 0.0)
            sample = {"method": "", "variant": s[0], "m": s[1], "kappa": s[2], "setting": s[3]}
            ax.bar(
                xs,
                ys,
                width,
                yerr=es if any(es) else None,
                capsize=2,
                label=setting_label(sample).strip(),
                color=VARIANT_COLOURS[s[0]],
                alpha=shades[s],
            )
        for variant in ("target", "retain"):
            mean, _ = _stat([r for r in runs if r["variant"] == variant], metric)
            if mean is not None:
                ax.axhline(mean, ls="--", lw=1.2, color=VARIANT_COLOURS[variant], label=variant)
        if metric == "forget_quality":
            ax.set_yscale("log")
        ax.set_xticks(range(len(methods)), methods, rotation=20, ha="right")
        better = METRICS.get(metric, ("", ""))[1].split(" (")[0]
        ax.set_title(f"{metric} ({better})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(6, len(labels)),
        fontsize=8,
        bbox_to_anchor=(0.5, -0.02),
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _overlaps(a, b, pad: float = 2.0) -> bool:
    return not (a.x1 + pad < b.x0 or b.x1 + pad < a.x0 or a.y1 + pad < b.y0 or b.y1 + pad < a.y0)


def place_labels(ax, points: Sequence[tuple[float, float, str]]) -> list:
    """Text artists for `points` (x, y, label), each moved to the first offset around its point
    where it overlaps no earlier label, no point marker and stays inside the axes."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    marker_boxes = []
    for x, y, _ in points:
        px, py = ax.transData.transform((x, y))
        from matplotlib.transforms import Bbox

        marker_boxes.append(Bbox([[px - 5, py - 5], [px + 5, py + 5]]))
    axes_box = ax.get_window_extent(renderer)
    offsets = [(6, 4), (6, -12), (-6, 4), (-6, -12), (0, 10), (0, -16)]
    offsets += [
        (dx * r, dy * r)
        for r in (2, 3, 4, 6)
        for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1), (1, 0), (-1, 0))
    ]
    placed, texts = [], []
    for i, (x, y, label) in enumerate(points):
        best = None
        for dx, dy in offsets:
            ha = "left" if dx > 0 else "right" if dx < 0 else "center"
            t = ax.annotate(
                label,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=LABEL_SIZE,
                ha=ha,
                va="bottom",
                arrowprops=dict(arrowstyle="-", lw=0.5, color="#888")
                if abs(dx) + abs(dy) > 20
                else None,
            )
            box = t.get_window_extent(renderer)
            inside = (
                axes_box.x0 <= box.x0
                and box.x1 <= axes_box.x1
                and axes_box.y0 <= box.y0
                and box.y1 <= axes_box.y1
            )
            clash = any(_overlaps(box, b) for b in placed) or any(
                _overlaps(box, m, pad=0) for m in marker_boxes
            )
            if inside and not clash:
                best = (t, box)
                break
            t.remove()
        if best is None:  # no free spot: the farthest candidate, still never on another label
            t = ax.annotate(
                label,
                (x, y),
                xytext=(0, -30 - 12 * i),
                textcoords="offset points",
                fontsize=LABEL_SIZE,
                ha="center",
                arrowprops=dict(arrowstyle="-", lw=0.5),
            )
            best = (t, t.get_window_extent(renderer))
        best[0].set_gid(f"label-{i}")
        placed.append(best[1])
        texts.append(best[0])
    return texts


def scatter(runs: Sequence[dict]):
    """Forget quality (log) against model utility: one point per setting, each labelled."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = []
    for key, group in {**_groups(runs, ("target", "retain")), **_groups(runs)}.items():
        x, _ = _stat(group, "model_utility")
        y, _ = _stat(group, "forget_quality")
        if x is not None and y is not None and y > 0:
            label = key[1] if key[1] in ("target", "retain") else setting_label(group[0])
            rows.append((x, y, label, key))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8.0, 5.6))
    methods = sorted({k[0] for *_, k in rows if k[1] not in ("target", "retain")})
    for x, y, _, key in rows:
        marker = (
            "*" if key[1] in ("target", "retain") else MARKERS[methods.index(key[0]) % len(MARKERS)]
        )
        ax.scatter(
            x,
            y,
            s=60,
            color=VARIANT_COLOURS[key[1]],
            marker=marker,
            edgecolor="black",
            linewidth=0.5,
            zorder=3,
        )
    ax.set_yscale("log")
    ax.set_xlabel("model utility (higher is better)")
    ax.set_ylabel("forget quality (higher is better, log)")
    ax.grid(alpha=0.3)
    xs = [r[0] for r in rows]
    ys = [r[1] for r in rows]
    span = max(xs) - min(xs) or 0.05
    ax.set_xlim(min(xs) - 0.35 * span, max(xs) + 0.35 * span)
    lo, hi = math.log10(min(ys)), math.log10(max(ys))
    pad = max(0.5, 0.25 * (hi - lo))
    ax.set_ylim(10 ** (lo - pad), 10 ** (hi + pad))
    legend = [
        Line2D(
            [],
            [],
            ls="",
            marker="o",
            color=VARIANT_COLOURS[v],
            label=v.capitalize() if v != "mpu" else "MPU",
        )
        for v in ("target", "retain", "clean", "noised", "mpu")
        if any(k[1] == v for *_, k in rows)
    ]
    legend += [
        Line2D(
            [],
            [],
            ls="",
            marker=MARKERS[i % len(MARKERS)],
            color="black",
            markerfacecolor="white",
            label=m,
        )
        for i, m in enumerate(methods)
    ]
    ax.legend(
        handles=legend,
        fontsize=8,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        title="colour: variant, shape: method",
        title_fontsize=8,
    )
    fig.tight_layout()
    fig.canvas.draw()
    place_labels(ax, [(x, y, label) for x, y, label, _ in rows])
    return fig


def sweep(runs: Sequence[dict], param: str):
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
            by_x: dict[float, list[dict]] = {}
            for r in rs:
                by_x.setdefault(_num(r[param]), []).append(r)
            pts = [(x, *_stat(g, metric)) for x, g in sorted(by_x.items())]
            pts = [p for p in pts if p[1] is not None]
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] or 0 for p in pts] if any(p[2] for p in pts) else None,
                ls="-" if variant == "mpu" else ":",
                marker="o",
                capsize=2,
                label=f"{method} {'MPU' if variant == 'mpu' else variant}",
            )
        for variant in ("target", "retain", "clean"):
            mean, _ = _stat([r for r in runs if r["variant"] == variant], metric)
            if mean is not None:
                ax.axhline(mean, ls="--", lw=1, color=VARIANT_COLOURS[variant], label=variant)
        if metric == "forget_quality":
            ax.set_yscale("log")
        xs = [_num(r[param]) for rs in series.values() for r in rs]
        if min(xs) > 0 and max(xs) / min(xs) >= 20:
            ax.set_xscale("log")
        ax.set_xlabel("κ (noise level)" if param == "kappa" else "m (copies)")
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def encode(fig, fmt: str) -> bytes:
    """The figure as PNG bytes or as SVG text with text drawn as paths (exact layout)."""
    import matplotlib
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "mpu"}):
        fig.savefig(buf, format=fmt, dpi=100, bbox_inches="tight")
    if fmt == "svg":
        plt.close(fig)
    return buf.getvalue()
