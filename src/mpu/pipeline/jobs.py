"""One experiment job: unlearn the target with one (method, variant) through the round loop.

The client here is local (`mpu.client.unlearn_copy` on every copy), with one learning-rate
schedule over the method's R·E epochs, a fresh optimizer per copy and round, the same data
order for every copy of a round, and the round-1 copy in the same folder as the reference
(policy first_round_copy; θ_1 itself for clean). A job interrupted mid-way resumes from its
server workdir on the next run, with the same secret key, so it ends where an uninterrupted
run would.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from mpu.client.train_config import ClientSettings
from mpu.io.checkpoint import clean_debris
from mpu.logs import progress as report
from mpu.pipeline.variants import job_config
from mpu.server.rounds import ClientFn, RoundContext, run_rounds

JOB_RECORD = "job.json"


def rounds_for(cfg: Any, method: str) -> tuple[int, int]:
    """(R, E) of a method: the paper's split (R·E = the stock budget) or (1, R·E). An explicit
    `client.epochs` is E, the epochs of each round (R stays the paper's, or 1 with `single`):
    a budget the user set is never replaced by the stock one."""
    from mpu.methods import rounds_and_epochs

    rounds, epochs = rounds_and_epochs(method)
    if cfg.client.epochs is not None:
        return (1 if cfg.rounds_epochs == "single" else rounds), cfg.client.epochs
    return (1, rounds * epochs) if cfg.rounds_epochs == "single" else (rounds, epochs)


IMPACT = "impact"  # the job that assesses where the forget set lives in the target (`impact=true`)

# a run's parts in seconds on the demo (tiny model, forget05): their ratios order the runs
COST_EVAL, COST_COPY, COST_REFERENCE, COST_AUDIT = 10, 12, 3, 5


def job_cost(name: str, server: Any, settings: dict[str, ClientSettings]) -> int:
    """Relative run time of the run `name` ("target" or "METHOD-VARIANT"), so the longest
    start first (fewer idle workers at the end), in the demo's seconds: an evaluation, each
    copy's client run (more with a reference model to score), and the privacy audit of every
    private variant — a Noised run takes about twice a Clean one's time, so Clean runs go last."""
    if name == "target":
        return COST_EVAL
    if name == IMPACT:  # the demo's Fisher assessment of the target: about an audit
        return COST_AUDIT
    method, variant = name.rsplit("-", 1)
    s = settings[method]
    copies = job_config(variant, server).copies
    per_copy = COST_COPY + (COST_REFERENCE if s.method.uses_reference(s.hp) else 0)
    return COST_EVAL + copies * per_copy + (0 if variant == "clean" else COST_AUDIT)


def client_settings(cfg: Any, method: str, n_params: int | None = None) -> ClientSettings:
    """The method's resolved client settings (the small-model rule needs the model's size)."""
    client = dataclasses.replace(cfg.client, method=method, seed=cfg.seed, prompt=cfg.prompt)
    return client.resolve(n_params)


def job_dp(cfg: Any, method: str):
    """The dp variant's DP settings: every update of the job is a release, R rounds × m copies
    (unit=example: the m copies of a round share their sampled items, which the trainer's
    accounting charges for)."""
    from mpu.pipeline.variants import job_config

    rounds, _ = rounds_for(cfg, method)
    m = job_config("dp", cfg.server).copies
    return dataclasses.replace(cfg.dp, releases=rounds * m, copies=m)


def dp_epsilon(cfg: Any, method: str, accounting: dict | None = None) -> float:
    """ε the dp variant of `method` spends over the whole job (opacus RDP); unit=example needs
    the trainer's `accounting` (its sample rate and the job's steps: `DP_ACCOUNTING`)."""
    dp = job_dp(cfg, method)
    if not dp.on_examples:
        return dp.spent()
    if accounting is None:
        raise ValueError("dp.unit=example: ε needs the client's accounting (sample rate, steps)")
    return dp.example_spent(accounting["sample_rate"], accounting["steps"])


DP_ACCOUNTING = "dp_accounting.json"


def keep_dp_accounting(work: Path, dest: Path) -> None:
    """The trainer's DP-SGD accounting of a job's first client run (every run of a job has the
    same) into `dest/DP_ACCOUNTING`: the work folder goes, the ε stays for the report."""
    from mpu.io.checkpoint import atomic_write_json

    for path in sorted(work.glob("round1/client-*/train_log.json"))[:1]:
        found = json.loads(path.read_text()).get("dp_sgd")
        if found:
            dest.mkdir(parents=True, exist_ok=True)
            atomic_write_json(dest / DP_ACCOUNTING, found)


def local_client(
    settings: ClientSettings, schedule: list[dict], data, *, seed: int, progress: bool
) -> ClientFn:
    """A client that unlearns every copy of a round in this process and returns the deltas."""
    from mpu.client.unlearn import unlearn_copy

    def client(ctx: RoundContext) -> list[Path]:
        index = ctx.round - 1
        round_settings = settings.replace(**schedule[index])
        deltas = []
        for i, copy in enumerate(ctx.copies):
            where = f"round {ctx.round}/{len(schedule)} copy {i + 1}/{len(ctx.copies)} step"
            out = ctx.workdir / f"client-{copy.name}"
            shutil.rmtree(out, ignore_errors=True)  # left by an interrupted run
            _, delta, _ = unlearn_copy(
                copy,
                data,
                round_settings,
                out,
                reference_dir=ctx.first_copies[i] if ctx.round > 1 else None,
                order_seed=seed * 1000 + index,
                progress=progress,
                on_step=lambda step, total, where=where: report(where, step, total),
                receipt_key=ctx.workdir.parent / "client.key",
            )
            deltas.append(delta)
        return deltas

    return client


def _server(work: Path, models: Path, job, fingerprint: dict):
    """The job's server: reopened when an earlier run of the same job left one, else new."""
    from mpu.server.job import Server

    record = work / JOB_RECORD
    resumable = (work / "server" / "state.json").is_file() and record.is_file()
    if resumable and json.loads(record.read_text()) == fingerprint:
        return Server(work / "server")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    server = Server.init(models / "target", models / "base", work / "server", job)
    from mpu.io.checkpoint import atomic_write_json

    atomic_write_json(record, fingerprint)
    return server


def unlearn(
    cfg: Any, settings: ClientSettings, variant: str, data: str, models: Path, work: Path
) -> Path:
    """Run one (method, variant) to the end; returns the final model folder (fp32)."""

    from transformers import AutoTokenizer

    from mpu.arch import load_config
    from mpu.client.plan import prompt_format, round_schedule, usable_items
    from mpu.client.unlearn import load_client_data
    from mpu.data import tofu_splits
    from mpu.pipeline.variants import VARIANTS

    rounds, epochs = rounds_for(cfg, settings.method.name)
    job = job_config(variant, cfg.server)
    eff = settings.replace(epochs=epochs)
    if eff.method.needs_teacher and eff.teacher is None:  # Distill: the public base
        eff = eff.replace(teacher=str(models / "base"))
    if VARIANTS[variant].dp:
        eff = eff.replace(dp=job_dp(cfg, settings.method.name))
    client_data = load_client_data(
        data, cfg.forget_split, eff, retain_split=tofu_splits(cfg.forget_split).retain
    )
    tok = AutoTokenizer.from_pretrained(str(models / "target"))
    config = load_config(models / "target")
    fmt = prompt_format(config.model_type, tok, eff)
    schedule = round_schedule(usable_items(tok, client_data.forget, eff, fmt), eff, rounds)
    fingerprint = {
        "variant": variant,
        "server": dataclasses.asdict(job),
        "client": eff.to_log(),
        "models": str(models),
        "data": str(data),
        "forget_split": cfg.forget_split,
        "seed": cfg.seed,
    }
    server = _server(work, models, job, json.loads(json.dumps(fingerprint, default=str)))
    client = local_client(eff, schedule, client_data, seed=cfg.seed, progress=cfg.progress)
    report("publishing round 1")
    run_rounds(
        server,
        rounds,
        client,
        work,
        on_round=lambda r, _: report(f"publishing round {r + 1}") if r < rounds else None,
    )
    final = work / "final"
    clean_debris(work)
    if not (final / "config.json").is_file():
        server.export(final, dtype="float32")
    return final


def audit_job(cfg: Any, work: Path, data: str, out: Path) -> dict:
    """The leakage audit of a finished job's round 1 (its copies and the client's updates, kept
    in `work`) and the check of its signed transcript; writes `out/leakage.json`, `leakage.md`."""
    from mpu.server.audit_log import verify
    from mpu.server.leakage import audit, write
    from mpu.server.rounds import outbox_of

    deltas = sorted((work / "round1").glob("client-*/delta.safetensors"))
    result = audit(work / "server", round_=1, copies_dir=outbox_of(work, 1), deltas=deltas,
                   data=data, forget_split=cfg.forget_split, limit=cfg.eval_limit or 50,
                   knowledge_limit=min(cfg.eval_limit or 200, 200), benchmark=False)  # fmt: skip
    checked = verify(work / "server")
    result["transcript"] = {k: checked[k] for k in ("entries", "rounds_replayed", "head")}
    write(result, out)
    return result
