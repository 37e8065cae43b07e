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
"""

from __future__ import annotations

import itertools
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mpu.errors import ConfigError

# κ up to 30: on a pre-trained model one copy keeps L ≥ 0.8 up to κ = 20 (SmolLM2,
# benchmarks/RESULTS.md); JobConfig allows α·κ ≤ 100
LADDER = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def measure(theta: Path, base: Path, knowledge, *, kappa: float, copies: int, residual: float,
            limit: int, work: Path, settings: Sequence[str] = ()) -> dict:  # fmt: skip
    """Publish round 1 at κ (with any other job `settings`, key=value) and score its
    functional leakage (no client run)."""
    from mpu.config import load_config
    from mpu.server.config import JobConfig
    from mpu.server.job import Server
    from mpu.server.leakage import functional_view, read_round

    cfg = load_config(JobConfig, overrides=[*settings, f"kappa={kappa}", f"copies={copies}",
                                            f"residual={residual}", "gate=false"])  # fmt: skip
    server = Server.init(theta, base, work / "server", cfg)
    published = server.publish(work / "outbox", progress=False)
    f = functional_view(read_round(server, 1, published), knowledge, limit)
    one, all_ = f["one_copy"]["answer_prob"], f["all_copies_with_base"]["answer_prob"]
    return {"kappa": kappa, "L_one_copy": one, "L_all_copies": all_, "L": max(one, all_)}


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
         limit: int = 100, refine: int = 2, verify: bool = True,
         settings: Sequence[str] = ()) -> dict:  # fmt: skip
    """The recommended setting for leakage ≤ `target` on this model, with the evidence:
    the ladder until L falls under the target, then `refine` more publications at the
    interpolated κ (each narrows the bracket), then one independent check. `settings`: other
    job settings (key=value) every publication uses, e.g. an emulator."""
    if not 0 < target < 1:
        raise ConfigError(f"--target-leakage {target}: expected a number in (0, 1)")
    theta, base = Path(theta), Path(base)
    points: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mpu-plan-") as tmp:
        run = lambda k, name: measure(theta, base, knowledge, kappa=k, copies=copies,  # noqa: E731
                                      residual=residual, limit=limit, work=Path(tmp) / name,
                                      settings=settings)  # fmt: skip
        for i, kappa in enumerate(ladder):
            points.append(run(kappa, f"k{i}"))
            if points[-1]["L"] <= target:
                break
        kappa = interpolate(points, target)
        for step in range(refine if kappa is not None and points[0]["L"] > target else 0):
            points = sorted([*points, run(kappa, f"refine{step}")], key=lambda p: p["kappa"])
            kappa = interpolate(_monotone(points), target)
        check = run(kappa, "check") if verify and kappa is not None else None
    out = {"target": target, "copies": copies, "residual": residual, "evidence": points,
           "knowledge": str(knowledge), "items": limit, "settings": list(settings)}  # fmt: skip
    if kappa is None:
        out["recommendation"] = None
        out["why"] = (f"no κ up to {ladder[-1]:g} brings the leakage to {target} with ρ = "
                      f"{residual:g}: raise server.residual or use fewer copies; on a "
                      "pre-trained model noise removes a fine-tune only with the model, so try "
                      "an emulator (emulator=layer_drop emulator_drop=D "
                      "emulator_distill_steps=N; docs/threat-model.md)")  # fmt: skip
        return out
    out["recommendation"] = {"server.kappa": round(kappa, 4), "server.residual": residual,
                             "server.copies": copies,
                             **{f"server.{kv.split('=', 1)[0]}": kv.split("=", 1)[1]
                                for kv in settings}}  # fmt: skip
    out["predicted_leakage"] = target if points[0]["L"] > target else points[0]["L"]
    if check is not None:
        out["measured_at_recommendation"] = check
    return out


def describe(result: dict) -> str:
    """What `mpu privacy plan` prints."""
    lines = [f"Functional leakage L per κ (m = {result['copies']}, ρ = {result['residual']:g}; "
             f"{result['items']} items of {result['knowledge']}):",
             "  κ        L one copy   L all copies + base"]  # fmt: skip
    lines += [f"  {p['kappa']:<8g} {p['L_one_copy']:<12.3f} {p['L_all_copies']:.3f}"
              for p in result["evidence"]]  # fmt: skip
    rec = result["recommendation"]
    if rec is None:
        return "\n".join([*lines, f"No recommendation: {result['why']}."])
    settings = " ".join(f"{k}={v:g}" if isinstance(v, float | int) else f"{k}={v}"
                        for k, v in rec.items())  # fmt: skip
    lines.append(f"Recommended: {settings} (predicted L = {result['predicted_leakage']:.3f}).")
    check = result.get("measured_at_recommendation")
    if check is not None:
        lines.append(f"Checked by publishing at it: L one copy {check['L_one_copy']:.3f}, "
                     f"L all copies + base {check['L_all_copies']:.3f}.")  # fmt: skip
    lines.append("Its cost in forgetting is measured by `benchmarks/frontier.py` (benchmarks/"
                 "RESULTS.md, \"The privacy–utility frontier\"); run the setting with `mpu run` "
                 "to see it on your data.")  # fmt: skip
    return "\n".join(lines)
