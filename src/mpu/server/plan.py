"""`mpu privacy plan`: the smallest noise that keeps a model's functional leakage under a target.

Leakage grows as κ falls and utility grows with it, so the setting a model owner wants is the
smallest κ whose copies leak at most the target. Functional leakage depends on the model (how
far fine-tuning moved it from the base, how flat its minima are), so it is measured on the
owner's own model, not read from a table: a job is initialised and round 1 published at each
κ of a ladder, and the audit scores the most telling copy as published (L one copy) and all
copies combined with the public base (L all). No client runs. Between the last κ above the
target and the first below it, L is interpolated linearly in log κ; two more publications at
the interpolated κ narrow the bracket, and the result is checked by publishing once more at
the recommended κ (`verify=True`).

The round's leakage is max(L one copy, L all): without residual noise the copies together
determine θ (L all ≈ 1 at any κ), so the plan keeps `server.residual` (ρ, default 1) on.

Low leakage is worth nothing if the copies no longer work: on a pre-trained model isotropic
noise removes the fine-tune only together with the model (benchmarks/RESULTS.md, SmolLM2), and
a client cannot unlearn on a copy that has forgotten everything. So every publication is also
scored on general questions that the base and θ both answer (the data's `world_facts` and
`real_authors`): the capability C of the weakest copy is its answer probability there over
θ's, and a κ whose copies keep less than `min_capability` of it is never recommended.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mpu.errors import ConfigError

if TYPE_CHECKING:  # the scoring modules import torch; the CLI imports this module to start
    from mpu.server.leakage.functional import Knowledge

# κ up to 30: on a pre-trained model one copy keeps L ≥ 0.8 up to κ = 20 (SmolLM2,
# benchmarks/RESULTS.md); JobConfig allows α·κ ≤ 100
LADDER = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
# the share of θ's general answer probability the weakest copy must keep. Measured (RESULTS.md,
# "Copies that still work"): where unlearning on copies still transferred the weakest copy kept
# 0.43–1.08 (tiny κ = 0.3, SmolLM2 κ = 3; one key draw per κ, so C is noisy), where it had
# stopped ≤ 0.053 (tiny κ ≥ 0.46, SmolLM2 κ ≥ 10 for NPO): 0.2 lies between, on a log scale
MIN_CAPABILITY = 0.2
GENERAL_SPLITS = ("world_facts", "real_authors")


@dataclass(frozen=True)
class General:
    """The general questions a plan scores every copy on, and θ's mean answer probability on
    them (scored once per plan: θ does not change between publications)."""

    items: Knowledge
    theta_prob: float


def general_items(knowledge: str | Path, theta: Path, limit: int) -> General | None:
    """`limit` questions spread over the general splits beside the knowledge data (the data
    folder itself, or the folder holding the knowledge split), encoded for θ and scored on it;
    None when that folder has none of them."""
    from mpu.server.leakage.functional import Knowledge, score
    from mpu.server.leakage.functional import knowledge as read_split
    from mpu.server.leakage.models import model_with

    root = Path(knowledge)
    root = root if (root / "full").is_dir() else root.parent
    found = [root / s for s in GENERAL_SPLITS if (root / s).is_dir()]
    if not found:
        return None
    parts = [read_split(theta, f, max(1, limit // len(found))) for f in found]
    items = Knowledge(", ".join(p.source for p in parts),
                      [e for p in parts for e in p.encoded], parts[0].pad_id)  # fmt: skip
    return General(items, score(model_with(theta), items)["answer_prob"])


def capability(copies: Sequence[Path], general: General) -> dict:
    """C of each copy: its mean answer probability on the general questions over θ's."""
    from mpu.server.leakage.functional import score
    from mpu.server.leakage.models import model_with

    per_copy = [score(model_with(c), general.items)["answer_prob"] / general.theta_prob
                for c in copies]  # fmt: skip
    return {"per_copy": per_copy, "weakest": min(per_copy)}


def measure(theta: Path, base: Path, knowledge, *, kappa: float, copies: int, residual: float,
            limit: int, work: Path, settings: Sequence[str] = (),
            general: General | None = None, anchors: dict | None = None) -> dict:  # fmt: skip
    """Publish round 1 at κ (with any other job `settings`, key=value) and score its
    functional leakage (no client run) and, given `general` items, the copies' capability.
    `anchors`: θ's and the base's knowledge scores, filled by the first call of a plan and
    reused by the others."""
    from mpu.config import load_config
    from mpu.server.config import JobConfig
    from mpu.server.job import Server
    from mpu.server.leakage import functional_view, read_round

    cfg = load_config(JobConfig, overrides=[*settings, f"kappa={kappa}", f"copies={copies}",
                                            f"residual={residual}", "gate=false"])  # fmt: skip
    server = Server.init(theta, base, work / "server", cfg)
    published = server.publish(work / "outbox", progress=False)
    view = read_round(server, 1, published)
    f = functional_view(view, knowledge, limit, anchors)
    one, all_ = f["one_copy"]["answer_prob"], f["all_copies_with_base"]["answer_prob"]
    out = {"kappa": kappa, "L_one_copy": one, "L_all_copies": all_, "L": max(one, all_)}
    if general is not None:
        out["capability"] = capability(view.copies, general)["weakest"]
    return out


def interpolate(points: Sequence[dict], target: float) -> float | None:
    """κ where L crosses `target`, linear in log κ between the bracketing points; the smallest
    measured κ when it is already under the target; None when no measured κ reaches it."""
    if points[0]["L"] <= target:
        return points[0]["kappa"]
    for lo, hi in itertools.pairwise(points):
        if hi["L"] <= target < lo["L"]:
            t = (lo["L"] - target) / (lo["L"] - hi["L"])
            return math.exp(
                math.log(lo["kappa"]) + t * (math.log(hi["kappa"]) - math.log(lo["kappa"]))
            )
    return None


def _monotone(points: list[dict]) -> list[dict]:
    """The points with L non-increasing in κ (a noisy point that breaks the order is dropped):
    the bracket search assumes more noise never leaks more."""
    out: list[dict] = []
    for p in points:
        if not out or p["L"] <= out[-1]["L"]:
            out.append(p)
    return out


def plan(theta: str | Path, base: str | Path, target: float, knowledge: str | Path, *,
         copies: int = 4, residual: float = 1.0, ladder: Sequence[float] = LADDER,
         limit: int = 100, refine: int = 2, verify: bool = True, settings: Sequence[str] = (),
         min_capability: float = MIN_CAPABILITY) -> dict:  # fmt: skip
    """The recommended setting for leakage ≤ `target` on this model, with the evidence:
    the ladder until L falls under the target, then `refine` more publications at the
    interpolated κ (each narrows the bracket), then one independent check. `settings`: other
    job settings (key=value) every publication uses, e.g. an emulator. A κ whose weakest copy
    keeps less than `min_capability` of θ's general answers is not recommended (0: no check)."""
    if not 0 < target < 1:
        raise ConfigError(f"--target-leakage {target}: expected a number in (0, 1)")
    if not 0 <= min_capability < 1:
        raise ConfigError(f"--min-capability {min_capability}: expected a number in [0, 1)")
    theta, base = Path(theta), Path(base)
    general = general_items(knowledge, theta, limit) if min_capability > 0 else None
    anchors: dict = {}  # θ's and the base's scores: the same at every κ, so scored once
    with tempfile.TemporaryDirectory(prefix="mpu-plan-") as tmp:
        run = lambda k, name: measure(theta, base, knowledge, kappa=k, copies=copies,  # noqa: E731
                                      residual=residual, limit=limit, work=Path(tmp) / name,
                                      settings=settings, general=general, anchors=anchors)  # fmt: skip
        points, kappa = _search(run, ladder, target, refine, min_capability)
        check = run(kappa, "check") if verify and kappa is not None else None
    out = {"target": target, "copies": copies, "residual": residual, "evidence": points,
           "knowledge": str(knowledge), "items": limit, "settings": list(settings),
           "min_capability": min_capability,
           "general": general.items.source if general is not None else None}  # fmt: skip
    if check is not None:
        out["measured_at_recommendation"] = check
    out["recommendation"], out["why"] = _recommend(out, kappa, ladder[-1], general is not None)
    if out["recommendation"] is not None:
        out["predicted_leakage"] = target if points[0]["L"] > target else points[0]["L"]
    return out


def _search(
    run, ladder: Sequence[float], target: float, refine: int, min_capability: float
) -> tuple[list[dict], float | None]:
    """The ladder until L falls under the target, then `refine` publications at the
    interpolated κ; returns the evidence (sorted by κ) and the κ read from it. The ladder stops
    early, with no κ, where the copies stop working while they still leak too much: more noise
    only breaks them further."""
    points: list[dict] = []
    for i, kappa in enumerate(ladder):
        points.append(run(kappa, f"k{i}"))
        if points[-1]["L"] <= target:
            break
        if points[-1].get("capability", 1.0) < min_capability:
            return points, None
    kappa = interpolate(points, target)
    for step in range(refine if kappa is not None and points[0]["L"] > target else 0):
        points = sorted([*points, run(kappa, f"refine{step}")], key=lambda p: p["kappa"])
        kappa = interpolate(_monotone(points), target)
    return points, kappa


EMULATOR_HINT = ("try an emulator (emulator=layer_drop emulator_drop=D emulator_distill_steps=N; "
                 "docs/threat-model.md)")  # fmt: skip


def _broken(out: dict, point: dict, kappa: float, leaks: str) -> str:
    """Why a κ whose copies no longer work is not recommended."""
    return (f"at κ = {kappa:.4g} the weakest copy keeps only {100 * point['capability']:.0f}% "
            f"of θ's answer probability on general questions (at least "
            f"{100 * out['min_capability']:.0f}% needed to unlearn on it) {leaks}: on this model "
            f"no κ both hides the fine-tune and leaves a working copy, so {EMULATOR_HINT}")  # fmt: skip


def _recommend(
    out: dict, kappa: float | None, top: float, checked: bool
) -> tuple[dict | None, str]:
    """The settings to use, or None and why: no κ reaches the target, or the copies stop
    working first (the ladder's last point), or at the κ that reaches it (read from the check,
    else the nearest evidence at or above κ)."""
    last = out["evidence"][-1]
    if kappa is None and last.get("capability", 1.0) < out["min_capability"]:
        leaks = f"while the round still leaks L = {last['L']:.2f} (target {out['target']})"
        return None, _broken(out, last, last["kappa"], leaks)
    if kappa is None:
        return None, (f"no κ up to {top:g} brings the leakage to {out['target']} with ρ = "
                      f"{out['residual']:g}: raise server.residual or use fewer copies; on a "
                      f"pre-trained model noise removes a fine-tune only with the model, so "
                      f"{EMULATOR_HINT}")  # fmt: skip
    if checked:
        at = out.get("measured_at_recommendation") or min(
            (p for p in out["evidence"] if p["kappa"] >= kappa), key=lambda p: p["kappa"]
        )
        if at["capability"] < out["min_capability"]:
            return None, _broken(out, at, kappa, f"though the copies leak at most {out['target']}")
    rec = {"server.kappa": round(kappa, 4), "server.residual": out["residual"],
           "server.copies": out["copies"],
           **{f"server.{kv.split('=', 1)[0]}": kv.split("=", 1)[1] for kv in out["settings"]}}  # fmt: skip
    if checked:
        return rec, ""
    if out["min_capability"] == 0:
        return rec, "the copies' capability was not checked (--min-capability 0)"
    return rec, ("the copies' capability was not checked: no world_facts or real_authors split "
                 "beside the knowledge data")  # fmt: skip


def describe(result: dict) -> str:
    """What `mpu privacy plan` prints."""
    checked = result.get("general") is not None
    lines = [f"Functional leakage L per κ (m = {result['copies']}, ρ = {result['residual']:g}; "
             f"{result['items']} items of {result['knowledge']})"
             + (f"; C: the weakest copy's share of θ's answer probability on {result['general']}:"
                if checked else ":"),
             "  κ        L one copy   L all copies + base" + ("   C" if checked else "")]  # fmt: skip
    lines += [f"  {p['kappa']:<8g} {p['L_one_copy']:<12.3f} {p['L_all_copies']:<21.3f}"
              + (f" {p['capability']:.3f}" if checked else "") for p in result["evidence"]]  # fmt: skip
    rec = result["recommendation"]
    if rec is None:
        return "\n".join([*lines, f"No recommendation: {result['why']}."])
    settings = " ".join(f"{k}={v:g}" if isinstance(v, float | int) else f"{k}={v}"
                        for k, v in rec.items())  # fmt: skip
    lines.append(f"Recommended: {settings} (predicted L = {result['predicted_leakage']:.3f}).")
    check = result.get("measured_at_recommendation")
    if check is not None:
        lines.append(f"Checked by publishing at it: L one copy {check['L_one_copy']:.3f}, "
                     f"L all copies + base {check['L_all_copies']:.3f}"
                     + (f", C {check['capability']:.3f}." if checked else "."))  # fmt: skip
    if result.get("why"):
        lines.append(f"Note: {result['why']}.")
    lines.append("Its cost in forgetting is measured by `benchmarks/frontier.py` (benchmarks/"
                 "RESULTS.md, \"The privacy–utility frontier\"); run the setting with `mpu run` "
                 "to see it on your data.")  # fmt: skip
    return "\n".join(lines)
