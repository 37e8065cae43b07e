"""The experiment's results: `report.json` (schema `mpu-report/1`), its rendering, and the
terminal table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mpu.config import to_dict

SCHEMA = "mpu-report/1"
TABLE_KEYS = ("forget_quality", "model_utility", "forget_Q_A_Prob", "privleak")


def privacy_of(cfg: Any, out: Path | None, name: str, variant: str) -> dict | None:
    """A job's leakage summary (its audit's leakage.json) and, for dp, the ε it spent."""
    from mpu.server.leakage import read, summary

    found = out is not None and (out / "eval" / name / "leakage.json").is_file()
    info = {**summary(read(out / "eval" / name / "leakage.json"))} if found else {}
    if found:
        info["transcript"] = read(out / "eval" / name / "leakage.json").get("transcript")
    if variant == "dp":
        from mpu.pipeline.jobs import DP_ACCOUNTING, dp_epsilon

        kept = out / "eval" / name / DP_ACCOUNTING if out is not None else None
        acct = json.loads(kept.read_text()) if kept is not None and kept.is_file() else None
        if acct is not None or not cfg.dp.on_examples:
            info["dp_epsilon"] = dp_epsilon(cfg, name.rsplit("-", 1)[0], acct)
            info["dp_delta"], info["dp_unit"] = cfg.dp.delta, cfg.dp.unit
    return info or None


def run_rows(cfg: Any, evals: dict[str, dict], out: Path | None = None) -> list[dict]:
    """One row per evaluated model: the retain and target references, then every job."""
    from mpu.eval.io import summary_of
    from mpu.eval.tofu import DEFAULT_METRICS
    from mpu.pipeline.variants import job_config

    def row(method: str | None, variant: str, name: str) -> dict:
        m = kappa = job = None
        if method is not None and variant != "clean":
            job = job_config(variant, cfg.server)
            m, kappa = job.copies, job.kappa
        return {
            "method": method,
            "variant": variant,
            "m": m,
            "kappa": kappa,
            **({"lines": job.lines} if job is not None and job.lines > 1 else {}),
            "summary": summary_of(evals[name], list(DEFAULT_METRICS)),
            "eval_file": f"eval/{name}/TOFU_EVAL.json",
            "privacy": None if method is None else privacy_of(cfg, out, name, variant),
        }

    rows = [row(None, "retain", "retain"), row(None, "target", "target")]
    rows += [row(m, v, f"{m}-{v}") for m in cfg.methods for v in cfg.variants]
    return rows


def write_report(
    cfg: Any,
    out: Path,
    data: str,
    models: Path,
    evals: dict[str, dict],
    timings: dict,
    settings: dict | None = None,
) -> Path:
    """Write OUT/report.json and render report.md / report.html beside it."""
    from mpu.data.store import write_json
    from mpu.eval.report import render_report
    from mpu.pipeline.jobs import rounds_for

    prompt = evals["target"].get("_meta", {}).get("prompt_format")
    report = {
        "schema": SCHEMA,
        "benchmark": "tofu",
        "title": f"Clean vs Noised vs MPU on {Path(data).name} {cfg.forget_split} "
        f"(m={cfg.server.copies}"
        + (f" on {cfg.server.lines} noise lines" if cfg.server.lines > 1 else "")
        + f", κ={cfg.server.kappa})",
        "config": {
            **to_dict(cfg),
            "data": data,
            "models": str(models),
            "rounds_epochs_by_method": {m: rounds_for(cfg, m) for m in cfg.methods},
            "prompt_format": prompt,
            "client_settings_by_method": {m: s.to_log() for m, s in (settings or {}).items()},
        },
        "timings_s": timings,
        "runs": run_rows(cfg, evals, out),
    }
    write_json(out / "report.json", report)
    render_report([out], out)
    return out / "report.json"


def summary_table(run_dir: Path, keys: tuple[str, ...] = TABLE_KEYS) -> str:
    """A compact text table of report.json for the terminal."""
    report = json.loads((Path(run_dir) / "report.json").read_text())
    lines = [f"{'run':24s}" + "".join(f"{k:>18s}" for k in keys)]
    for r in report["runs"]:
        name = r["variant"] if r["method"] is None else f"{r['method']}-{r['variant']}"
        vals = "".join(
            f"{r['summary'].get(k) if r['summary'].get(k) is not None else float('nan'):>18.4g}"
            for k in keys
        )
        lines.append(f"{name:24s}{vals}")
    return "\n".join(lines)
