"""What a report says in words, computed from its numbers: what was run, what it shows, what
each metric measures, and rows that changed nothing.

Everything here is derived from the runs of `report.json`; no sentence is a fixed claim. The
headline comparison is the one MPU exists for: how much of Clean's forgetting (the exact
model, no privacy) MPU recovers, against one noisy copy (Noised).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

# metric -> (what it measures, which way is better)
METRICS: dict[str, tuple[str, str]] = {
    "forget_quality": (
        "p-value of a KS test between this model's truth ratios on the forget set and the "
        "retain model's (a model never trained on it); 1 = indistinguishable",
        "higher is better",
    ),
    "model_utility": (
        "harmonic mean of nine answer-probability, ROUGE and truth-ratio scores on retained "
        "authors, real authors and world facts: what the model still knows",
        "higher is better (stay near the target's)",
    ),
    "forget_Q_A_Prob": (
        "mean probability the model gives the forget set's answers",
        "lower is better (towards the retain model's)",
    ),
    "forget_Q_A_ROUGE": (
        "ROUGE-L recall of the model's greedy answers to forget questions",
        "lower is better",
    ),
    "forget_truth_ratio": (
        "how strongly the model prefers a paraphrase of the true answer over wrong ones "
        "(min(r, 1/r) averaged; 1 = no preference)",
        "closer to the retain model's is better",
    ),
    "privleak": (
        "membership leakage: Min-K% AUC between forget and holdout items, relative to the "
        "retain model (0 = like retain, −100 = fully memorised)",
        "closer to 0 is better",
    ),
    "extraction_strength": (
        "share of each forget answer the model reproduces once given a prefix of it",
        "lower is better",
    ),
    "forget_knowmem_ROUGE": ("ROUGE-L of answers to questions on the forget corpus", "lower"),
    "retain_knowmem_ROUGE": ("ROUGE-L of answers to questions on the retain corpus", "higher"),
    "forget_verbmem_ROUGE": ("ROUGE-L of continuations of forget passages", "lower"),
}
VARIANTS = {
    "target": "the model before unlearning (it memorised the forget set)",
    "retain": "a model trained without the forget set: the goal of unlearning",
    "clean": "the client unlearns the exact model: no privacy, the reference result",
    "noised": "one perturbed copy, its update applied directly: the naive private baseline",
    "mpu": "m perturbed, reparameterized copies; updates inverted and combined so the noise "
    "cancels (by default extrapolated to zero noise along the copies' noise line)",
    "mpu_paper": "the paper's MPU: zero-sum noise, α from 1 to 2, harmonic weights",
    "mpu_uniform": "MPU with equal weights 1/m instead of the harmonic ones (ablation)",
    "dp": "MPU whose client clips and noises every update (differential privacy, ε from opacus)",
}
# |difference| below these on both headline numbers = indistinguishable from the target
NO_EFFECT = {"forget_Q_A_Prob": 0.005, "model_utility": 0.005}


def finite_number(x: Any) -> float | None:
    """`x` as a float when it is a finite real number (not a bool), else None."""
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return float(x) if ok else None


_num = finite_number


def _mean_spread(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _reference(runs: Sequence[dict], variant: str, metric: str) -> float | None:
    vals = [_num(r["summary"].get(metric)) for r in runs if r["variant"] == variant]
    vals = [v for v in vals if v is not None]
    return statistics.fmean(vals) if vals else None


def no_effect_rows(runs: Sequence[dict]) -> list[dict]:
    """Unlearning rows whose headline numbers equal the target's: the run changed nothing."""
    flagged = []
    for r in runs:
        if r["variant"] not in ("clean", "noised", "mpu"):
            continue
        close = []
        for metric, tol in NO_EFFECT.items():
            t, v = _reference(runs, "target", metric), _num(r["summary"].get(metric))
            close.append(t is not None and v is not None and abs(v - t) < tol)
        if all(close):
            flagged.append(r)
    return flagged


def group_key(r: dict) -> tuple:
    """Runs with equal keys are replicates of one setting (averaged, with their spread)."""
    if r["variant"] in ("clean", "target", "retain"):  # no noise: κ and m do not apply
        return (r["method"], r["variant"], None, None, r.get("setting", ""))
    return (r["method"], r["variant"], r.get("m"), r.get("kappa"), r.get("setting", ""))


def setting_label(r: dict) -> str:
    """e.g. "NPO MPU (κ=0.1, m=2)"; the extra setting when run dirs differ in more than κ/m."""
    name = {"mpu": "MPU", "clean": "Clean", "noised": "Noised", "dp": "DP",
            "mpu_uniform": "MPU-uniform", "mpu_paper": "MPU-paper"}.get(r["variant"], r["variant"])  # fmt: skip
    bits = []
    private = ("noised", "mpu", "dp", "mpu_uniform", "mpu_paper")
    if r["variant"] in private and _num(r.get("kappa")) is not None:
        bits.append(f"κ={r['kappa']:g}")
    if r["variant"] in private[1:] and r.get("m"):
        bits.append(f"m={r['m']}")
    if r.get("setting"):
        bits.append(r["setting"])
    return f"{r['method']} {name}" + (f" ({', '.join(bits)})" if bits else "")


def _recovery(target: float, clean: float, x: float) -> float | None:
    """Share of Clean's forgetting (drop of forget answer probability) that `x` achieved."""
    gap = target - clean
    return (target - x) / gap if abs(gap) > 1e-9 else None


def verdicts(runs: Sequence[dict]) -> list[str]:
    """One sentence per (method, κ, m) setting comparing MPU and Noised with Clean."""
    target = _reference(runs, "target", "forget_Q_A_Prob")
    retain = _reference(runs, "retain", "forget_Q_A_Prob")
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault(group_key(r), []).append(r)
    out = []
    for method in sorted({r["method"] for r in runs if r["variant"] == "clean"}):
        clean_runs = [r for k, g in groups.items() if k[:2] == (method, "clean") for r in g]
        clean_p = [_num(r["summary"].get("forget_Q_A_Prob")) for r in clean_runs]
        clean_p = [v for v in clean_p if v is not None]
        if target is None or not clean_p:
            continue
        clean_mean, _ = _mean_spread(clean_p)
        settings = sorted(
            {(k[2], k[3], k[4]) for k in groups if k[0] == method and k[1] == "mpu"},
            key=lambda s: (s[1] or 0, s[0] or 0, s[2]),
        )
        for m, kappa, setting in settings:
            parts, shares = [], {}
            for variant in ("mpu", "noised"):
                rows = [
                    r
                    for k, g in groups.items()
                    if k[0] == method
                    and k[1] == variant
                    and k[3] == kappa
                    and k[4] == setting
                    and (variant == "noised" or k[2] == m)
                    for r in g
                ]
                rec = [
                    _recovery(target, clean_mean, v)
                    for v in (_num(r["summary"].get("forget_Q_A_Prob")) for r in rows)
                    if v is not None
                ]
                rec = [x for x in rec if x is not None]
                if rec:
                    mean, spread = _mean_spread(rec)
                    pm = f" ± {100 * spread:.0f}" if spread is not None else ""
                    parts.append((variant, f"{100 * mean:.0f}%{pm}"))
                    shares[variant] = (mean, spread)
            if not parts:
                continue
            got = dict(parts)
            tail = f" ({len(clean_p)} seeds)" if len(clean_p) > 1 else ""
            lines = {r.get("lines", 1) for k, g in groups.items() if k[0] == method and
                     k[1] == "mpu" and k[2:] == (m, kappa, setting) for r in g}  # fmt: skip
            on = f" on {max(lines)} noise lines" if max(lines, default=1) > 1 else ""
            where = f"κ = {kappa:g}, m = {m}{on}" + (f", {setting}" if setting else "")
            sentence = (
                f"{method} at {where}: MPU recovered {got.get('mpu', '—')} of Clean's forgetting"
            )
            if "noised" in got:
                sentence += f" where one noisy copy recovered {got['noised']}"
            sentence += (
                f" (forget answer probability: target {target:.3f}, Clean {clean_mean:.3f}"
                + (f", retain model {retain:.3f}" if retain is not None else "")
                + f"){tail}."
            )
            out.append(f"{sentence} {_gap(shares, kappa)}".rstrip())
    return out


# Clean's share is 1 by definition; a variant within this many points of it (or within twice
# its seed spread, when larger) counts as matching Clean
MATCH = 0.05


def _gap(shares: dict[str, tuple[float, float | None]], kappa: float) -> str:
    """What the MPU-vs-Noised comparison shows at this κ, said plainly (or "" without Noised)."""
    if "mpu" not in shares or "noised" not in shares:
        return ""

    def matches(variant: str) -> bool:
        mean, spread = shares[variant]
        return abs(1 - mean) <= max(MATCH, 2 * (spread or 0))

    mpu_ok, noised_ok = matches("mpu"), matches("noised")
    if mpu_ok and not noised_ok:
        return "MPU kept Clean's forgetting where one noisy copy did not."
    if mpu_ok and noised_ok:
        return (
            f"At κ = {kappa:g} one noisy copy is already as good as Clean on this model, so this "
            "run shows the protocol working end to end, not MPU's advantage over Noised."
        )
    # a share above 100% is over-forgetting: also a departure from Clean
    if abs(1 - shares["mpu"][0]) < abs(1 - shares["noised"][0]):
        return "MPU came closer to Clean than one noisy copy but did not match it at this noise."
    return "MPU did not match Clean at this noise and was no closer to it than one noisy copy."


def findings(runs: Sequence[dict]) -> list[str]:
    """The "what it shows" bullets: verdicts, distance to the retain model, flagged rows."""
    lines = verdicts(runs)
    target = _reference(runs, "target", "forget_Q_A_Prob")
    retain = _reference(runs, "retain", "forget_Q_A_Prob")
    clean = [r for r in runs if r["variant"] == "clean"]
    if target is not None and retain is not None and clean and abs(target - retain) > 1e-9:
        ps = [_num(r["summary"].get("forget_Q_A_Prob")) for r in clean]
        ps = [p for p in ps if p is not None]
        if ps:
            way = (target - statistics.fmean(ps)) / (target - retain)
            lines.append(
                f"Clean unlearning went {100 * way:.0f}% of the way from the target's forget answer "
                f"probability ({target:.3f}) to the retain model's ({retain:.3f})."
            )
    fq = [
        _num(r["summary"].get("forget_quality")) for r in runs if r["variant"] in ("clean", "mpu")
    ]
    fq = [v for v in fq if v is not None]
    fq_retain = _reference(runs, "retain", "forget_quality")
    if fq and fq_retain is not None and max(fq) < 0.05:
        lines.append(
            f"Forget quality stays at most {max(fq):.1e} (retain model: {fq_retain:.2g}): the "
            "truth ratios of every unlearned model are still distinguishable from a model that "
            "never saw the forget set. This is expected when a short run starts from a model that "
            "memorised the forget set; longer or stronger unlearning moves it up, usually at a "
            "cost in model utility."
        )
    mu_t = _reference(runs, "target", "model_utility")
    mus = [
        _num(r["summary"].get("model_utility"))
        for r in runs
        if r["variant"] in ("clean", "noised", "mpu")
    ]
    mus = [m for m in mus if m is not None]
    if mu_t is not None and mus:
        lines.append(
            f"Model utility moved from {mu_t:.3f} (target) to between {min(mus):.3f} and "
            f"{max(mus):.3f} after unlearning."
        )
    for r in no_effect_rows(runs):
        lines.append(
            f"{setting_label(r)} is indistinguishable from the target (forget answer probability "
            f"and model utility within 0.005): the run changed nothing — raise client.lr or use "
            "client.precision=fp32 (docs/methods.md)."
        )
    lines += privacy_findings(runs)
    return lines


def privacy_findings(runs: Sequence[dict]) -> list[str]:
    """What each audited run protected and what it did not, in one sentence each."""
    out = []
    for r in runs:
        p = r.get("privacy") or {}
        one, all_ = _num(p.get("one_copy_aligned")), _num(p.get("all_copies_with_base"))
        if one is None or all_ is None:
            continue
        both = (f"{100 * one:.1f}% (one copy) and {100 * all_:.1f}% (all {p['copies']} copies)"
                if (p.get("copies") or 1) > 1 else f"{100 * one:.1f}%")  # fmt: skip
        s = (f"Privacy of {setting_label(r)}: a client aligning the copies to the public base "
             f"rebuilt the server's weights to within {both} of what fine-tuning changed")  # fmt: skip
        floor = _num(p.get("residual_floor"))
        s += (f", and no attack can do better than {100 * floor:.1f}% (residual noise)"
              if floor else "; the copies hide θ only behind the secret maps, not information-"
              "theoretically (server.residual adds a floor)")  # fmt: skip
        ell = _num(p.get("functional_one_copy"))
        if ell is not None:
            s += (f". Run as published, its most telling copy computes {100 * ell:.0f}% of what "
                  "fine-tuning taught θ (functional leakage L; 100% is a clone)")  # fmt: skip
        recall, chance = _num(p.get("token_recall_at_k")), _num(p.get("token_chance_at_k"))
        if recall is not None:
            s += (f". The server's view: the update's embedding rows named the forget set's "
                  f"tokens with recall {recall:.2f} (chance {chance:.2f})")  # fmt: skip
        eps = _num(p.get("dp_epsilon"))
        if eps is not None:
            s += f"; the client's updates were ({eps:.3g}, {p.get('dp_delta'):g})-DP"
        out.append(s + ".")
    return out


def what_was_run(reports: Sequence[dict], runs: Sequence[dict]) -> list[str]:
    """The "what was run" bullets: the variants present, the data and the settings."""
    present = [v for v in ("clean", "noised", "mpu", "mpu_paper", "mpu_uniform", "dp")
               if any(r["variant"] == v for r in runs)]  # fmt: skip
    names = {"mpu": "MPU", "dp": "DP", "mpu_uniform": "MPU (uniform weights)",
             "mpu_paper": "MPU (the paper's)"}  # fmt: skip
    lines = [f"{names.get(v, v.capitalize())}: {VARIANTS[v]}." for v in present]
    methods = sorted({r["method"] for r in runs if r["method"]})
    if methods:
        lines.append(f"Methods: {', '.join(methods)}.")
    for rep in reports:
        cfg = rep.get("config", {})
        server, client = cfg.get("server", {}), cfg.get("client", {})
        bits = []
        if cfg.get("forget_split"):
            bits.append(f"forget split {cfg['forget_split']}")
        if server:
            bits.append(
                f"κ = {server.get('kappa')}, m = {server.get('copies')}, α = {server.get('alphas')}"
            )
        if cfg.get("rounds_epochs_by_method"):
            re_ = ", ".join(f"{m} {r}×{e}" for m, (r, e) in cfg["rounds_epochs_by_method"].items())
            bits.append(f"rounds × epochs {re_}")
        resolved = cfg.get("client_settings_by_method") or {}
        for method, s in sorted(resolved.items()):
            bits.append(
                f"{method} client: {s.get('optimizer')} lr {s.get('lr'):g}, {s.get('precision')}, "
                f"batch {s.get('batch_size')}×{s.get('grad_accum')}"
                + (f" [{s['defaults_rule']}]" if s.get("defaults_rule") else "")
            )
        if client and not resolved:
            bits.append(f"client profile {client.get('profile')}")
        if bits:
            lines.append(f"Settings ({rep.get('_dir', 'run')}): " + "; ".join(bits) + ".")
    return lines
