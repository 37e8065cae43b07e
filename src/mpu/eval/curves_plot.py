"""The report's training-curve figure: per method, the forget and retain loss per step of every
client run it kept — Clean, Noised and each MPU copy (`mpu.client.curves` writes them; `mpu
run` keeps them under RUN/curves/<method>-<variant>/round<r>-<copy>.jsonl)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

PANELS = (("forget_loss", "forget loss"), ("retain_loss", "retain loss"))
COLOURS = {"clean": "#1f77b4", "noised": "#ff7f0e", "mpu": "#d62728", "dp": "#9467bd",
           "mpu_paper": "#8c564b", "mpu_uniform": "#e377c2"}  # fmt: skip


def run_curves(run: dict) -> dict[str, list[dict]]:
    """A run's records per copy, rounds joined in order (their steps continue across rounds)."""
    from mpu.io.jsonl import read_jsonl

    folder = Path(run["_dir"]) / "curves" / f"{run['method']}-{run['variant']}"
    out: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("round*-*.jsonl"), key=_round_of):
        copy = path.stem.split("-", 1)[1]
        out.setdefault(copy, []).extend(read_jsonl(path))
    return out


def _round_of(path: Path) -> tuple[int, str]:
    head, _, rest = path.stem.partition("-")
    return int(head.removeprefix("round") or 0), rest


def curves(runs: Sequence[dict], method: str):
    """One figure for `method` (None when none of its runs kept curves)."""
    import matplotlib.pyplot as plt

    found = [(r, run_curves(r)) for r in runs if r.get("method") == method]
    found = [(r, c) for r, c in found if c]
    if not found:
        return None
    panels = [p for p in PANELS if any(p[0] in rec for _, c in found for recs in c.values()
                                        for rec in recs)]  # fmt: skip
    panels = panels or [("loss", "loss")]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for run, by_copy in found:
            for i, (copy, recs) in enumerate(sorted(by_copy.items())):
                pts = [(rec["step"], rec[key]) for rec in recs if key in rec]
                if not pts:
                    continue
                label = _label(run, copy)
                ax.plot(*zip(*pts, strict=True), lw=1.2, alpha=0.85, label=label,
                        color=COLOURS.get(run["variant"], "#7f7f7f"),
                        ls="-" if i == 0 else (":", "--", "-.")[i % 3])  # fmt: skip
        ax.set(title=f"{method}: {title}", xlabel="optimizer step", ylabel=title)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _label(run: dict, copy: str) -> str:
    setting = ""
    if run.get("kappa") is not None:
        setting = f" κ={run['kappa']:g}"
    return f"{run['variant']}{setting} {copy}" if run["variant"] != "clean" else "clean"
