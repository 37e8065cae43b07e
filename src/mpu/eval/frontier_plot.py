"""The report's privacy–utility figure: each audited run's functional leakage against how far
its forgetting lands from Clean's (the frontier of `benchmarks/frontier.py`, for the runs at
hand). Leakage: max(L of the most telling copy, L of all copies with the base); distance: the
forget answer probability's gap to the same method's Clean run, in points."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from mpu.eval.findings import finite_number as _num
from mpu.eval.findings import setting_label


def points(runs: Sequence[dict]) -> list[tuple[float, float, str]]:
    """(leakage, |forget-probability gap to Clean| in points, label) per audited run."""
    clean: dict[str, list[float]] = {}
    for r in runs:
        value = _num((r.get("summary") or {}).get("forget_Q_A_Prob"))
        if r.get("variant") == "clean" and value is not None:
            clean.setdefault(r["method"], []).append(value)
    out = []
    for r in runs:
        p = r.get("privacy") or {}
        one, all_ = _num(p.get("functional_one_copy")), _num(p.get("functional_all_with_base"))
        value = _num((r.get("summary") or {}).get("forget_Q_A_Prob"))
        if one is None or value is None or r["method"] not in clean:
            continue
        leak = max(one, all_ if all_ is not None else one)
        gap = abs(value - statistics.fmean(clean[r["method"]])) * 100
        out.append((leak, gap, setting_label(r)))
    return out


def frontier(runs: Sequence[dict]):
    """The figure, or None when no run carries functional leakage and a Clean counterpart."""
    import matplotlib.pyplot as plt

    pts = points(runs)
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for leak, gap, label in pts:
        ax.scatter(leak, gap, s=28, c="#d62728")
        ax.annotate(label, (leak, gap), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.axvline(0.5, ls=":", c="k", lw=0.8)
    ax.set(xlabel="functional leakage: max(L one copy, L all copies + base)",
           ylabel="|forget answer prob − Clean's| (points)", xlim=(-0.05, 1.1))  # fmt: skip
    fig.tight_layout()
    return fig
