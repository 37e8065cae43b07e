"""`mpu client unlearn`: the data owner's whole local step on one published copy.

Checks everything a client can check before training (the copy is a model folder with a valid
ticket whose weight hashes match, the reference copy belongs to the same job, the data has the
splits the method needs, the method and hyperparameters exist), then unlearns, saves the
unlearned copy as a Hugging Face folder and writes the delta the server aggregates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mpu.client.train_config import ClientSettings, ClientTrainConfig
from mpu.errors import CheckpointError, ConfigError, UpdateRejectedError

log = logging.getLogger("mpu.client")


@dataclass
class ClientData:
    """The rows a client trains on: forget, retain (paired by the trainer) and IDK refusals."""

    forget: list[dict]
    retain: list[dict] | None
    idk: list[str] | None
    holdout: list[dict] | None = None  # adversarial membership training's never-seen items


def load_client_data(
    source: str | Path,
    forget_split: str,
    cfg: ClientTrainConfig | ClientSettings,
    *,
    retain_split: str | None = None,
) -> ClientData:
    """Load what the configured method needs; a missing split or field is a DataError now."""
    from mpu.client.plan import settings_of
    from mpu.data import is_tofu_forget, load_idk, load_split, tofu_splits

    eff = settings_of(cfg)  # unknown hyperparameters fail here, before any loading
    spec, hp = eff.method, eff.hp
    forget = [dict(r) for r in load_split(source, forget_split)]
    if spec.needs_alternates and forget and "alternate" not in forget[0]:
        forget = _with_alternates(source, forget_split, forget, spec.name)
    retain = None
    if spec.uses_retain(hp):
        name = retain_split or (
            tofu_splits(forget_split).retain if is_tofu_forget(forget_split) else None
        )
        if name is None:
            raise ConfigError(
                f"{spec.name} needs a retain split: pass --retain-split for {forget_split!r}"
            )
        retain = [dict(r) for r in load_split(source, name)]
    idk = load_idk(source) if spec.needs_idk else None
    holdout = _adversary_holdout(source, forget_split, eff) if eff.mia_adversary.enabled else None
    return ClientData(forget, retain, idk, holdout)


def _adversary_holdout(source, forget_split: str, eff) -> list[dict]:
    """The client's own never-seen items: `mia_adversary.holdout_split`, or for TOFU holdout10
    without the rows the evaluation's holdout of `forget_split` scores."""
    from mpu.io.datasets import is_tofu_forget, load_split, tofu_splits

    name = eff.mia_adversary.holdout_split
    if name is not None:
        return [dict(r) for r in load_split(source, name)]
    if not is_tofu_forget(forget_split):
        raise ConfigError("mia_adversary: name the client's never-seen items "
                          "(mia_adversary.holdout_split)")  # fmt: skip
    scored = {r["question"] for r in load_split(source, tofu_splits(forget_split).holdout)}
    rows = [dict(r) for r in load_split(source, "holdout10") if r["question"] not in scored]
    if not rows:
        raise ConfigError(f"mia_adversary: every holdout10 row is scored by the {forget_split} "
                          "evaluation; give mia_adversary.holdout_split items it does not use")  # fmt: skip
    return rows


def _with_alternates(source, forget_split: str, forget: list[dict], method: str) -> list[dict]:
    """The forget rows with their offline alternates from TOFU's `forgetNN_alternate` split
    (same questions, same order); DataError naming what is missing otherwise."""
    from mpu.errors import DataError
    from mpu.io.datasets import is_tofu_forget, load_split, tofu_splits

    if not is_tofu_forget(forget_split):
        raise DataError(f"{method}: the {forget_split} rows have no 'alternate' answers; give "
                        "each row a list of alternates")  # fmt: skip
    name = tofu_splits(forget_split).forget_alternate
    try:
        alt = [dict(r) for r in load_split(source, name)]
    except DataError as exc:
        raise DataError(f"{method} needs the {name} split (alternate answers; `mpu data make "
                        f"tofu` writes it): {exc}") from None  # fmt: skip
    if [r["question"] for r in alt] != [r["question"] for r in forget]:
        raise DataError(f"{source}: {name} does not hold the questions of {forget_split} in "
                        "the same order")  # fmt: skip
    return alt


def _teacher(eff: ClientSettings, model):
    """The frozen teacher a method reads (Distill), loaded from `teacher`; None otherwise. Its
    vocabulary must be the copy's: the student follows its next-token distributions."""
    if not eff.method.needs_teacher or eff.teacher is None:
        return None  # the trainer refuses a missing teacher with the setting to give
    import torch
    from transformers import AutoModelForCausalLM

    teacher = AutoModelForCausalLM.from_pretrained(eff.teacher, dtype=torch.float32)
    if teacher.config.vocab_size != model.config.vocab_size:
        raise ConfigError(f"teacher={eff.teacher}: vocabulary of {teacher.config.vocab_size} "
                          f"tokens, the copy has {model.config.vocab_size}")  # fmt: skip
    return teacher.requires_grad_(False).eval()


def check_copy(copy_dir: str | Path, reference_dir: str | Path | None = None):
    """The copy's ticket, after checking its weights and the reference's job; raises otherwise."""
    from mpu.io.checkpoint import Checkpoint
    from mpu.io.delta import read_ticket

    ticket = read_ticket(copy_dir)
    if Checkpoint(copy_dir).sha256() != ticket.weights_sha256:
        raise CheckpointError(
            f"{copy_dir}: weights do not match the copy's ticket (modified after publication)"
        )
    if reference_dir is not None:
        ref = read_ticket(reference_dir)
        if ref.job_id != ticket.job_id:
            raise UpdateRejectedError(
                f"{reference_dir}: reference copy belongs to job {ref.job_id}, the copy to job {ticket.job_id}"
            )
    return ticket


def unlearn_copy(
    copy_dir: str | Path,
    data: ClientData,
    cfg: ClientTrainConfig | ClientSettings,
    out_dir: str | Path,
    *,
    reference_dir: str | Path | None = None,
    order_seed: int | None = None,
    progress: bool = True,
    on_step=None,
    receipt_key: str | Path | None = None,
) -> tuple[Path, Path, dict]:
    """Unlearn one copy; returns (unlearned model folder, delta file, training logs).

    Beside the delta goes `receipt.json`: the client's signed statement of which copy it received
    and which update it returned (key: `receipt_key`, else `client_key_path()`). Under
    `accelerate launch` every process trains (client/distributed.py) and process 0 writes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.client.diff import make_delta
    from mpu.client.distributed import current_processes
    from mpu.client.effect import no_effect
    from mpu.client.plan import settings_of
    from mpu.client.trainer import train_unlearning

    check_copy(copy_dir, reference_dir)
    out = Path(out_dir)
    if (out / "model").exists() or (out / "delta.safetensors").exists():
        raise ConfigError(f"{out}: already holds an unlearned model or delta; choose a new --out")
    tokenizer = AutoTokenizer.from_pretrained(str(copy_dir))
    model = AutoModelForCausalLM.from_pretrained(str(copy_dir), dtype=torch.float32)
    reference = None
    if reference_dir is not None:
        reference = AutoModelForCausalLM.from_pretrained(
            str(reference_dir), dtype=torch.float32
        ).eval()
        reference.requires_grad_(False)
    eff = settings_of(cfg, model.num_parameters())
    teacher = _teacher(eff, model)
    result = train_unlearning(
        model,
        tokenizer,
        data.forget,
        data.retain,
        eff,
        reference_model=reference,
        idk_answers=data.idk,
        order_seed=order_seed,
        progress=progress,
        on_step=on_step,
        teacher_model=teacher,
        holdout_rows=data.holdout,
    )
    model_dir, delta = out / "model", out / "delta.safetensors"
    procs = current_processes()
    if not procs.is_main:  # identical weights on every process; process 0 writes them
        procs.wait()
        return model_dir, delta, {"steps": result.step_count, "process": procs.index}
    _write_records(out, result, eff.report_to)
    result.model.to("cpu").save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    stats: dict = {}
    delta = make_delta(copy_dir, model_dir, delta, stats=stats, dp=eff.dp)
    write_receipt(copy_dir, delta, out / "receipt.json", key_path=receipt_key)
    procs.wait()
    warning = no_effect(result.logs, stats["changed_fraction"], eff)
    if warning:
        log.warning("%s", warning)
    info = {
        "steps": result.step_count,
        "effective_config": result.effective_config,
        "forget_loss": result.logs["forget_loss"],
        "changed_fraction": stats["changed_fraction"],
        "no_effect": warning,
        "dp": stats.get("dp") or result.logs.get("dp_sgd"),
    }
    return model_dir, delta, info


def _write_records(out: Path, result, report_to: str) -> None:
    """The run's records beside its delta: the per-step curves (curves.jsonl, and TensorBoard
    events when asked) and everything else the trainer logged (train_log.json)."""
    from mpu.client.curves import write_curves
    from mpu.io.checkpoint import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    write_curves(out, result.logs["steps"], report_to)
    record = {k: v for k, v in result.logs.items() if k != "steps"}  # the steps: curves.jsonl
    atomic_write_json(
        out / "train_log.json", {**record, "effective_config": result.effective_config}
    )


def client_key_path() -> Path:
    """Where the client's Ed25519 receipt key lives: $MPU_CLIENT_KEY, else
    $XDG_CONFIG_HOME/mpu/client.key (~/.config/mpu/client.key); created on first use, 0600."""
    import os

    if os.environ.get("MPU_CLIENT_KEY"):
        return Path(os.environ["MPU_CLIENT_KEY"])
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "mpu" / "client.key"


def write_receipt(
    copy_dir: str | Path, delta: Path, out: Path, *, key_path: str | Path | None = None
) -> dict:
    """Sign and write (atomically) the receipt of one copy received and one update returned."""
    from mpu.io.checkpoint import atomic_write_json
    from mpu.io.delta import read_ticket
    from mpu.io.transcript import SigningKey, commitment, receipt

    ticket = read_ticket(copy_dir)
    key = SigningKey.load_or_create(key_path or client_key_path())
    obj = receipt(key, job_id=ticket.job_id, round_=ticket.round, copy_id=ticket.copy_id,
                  copy=commitment(copy_dir), delta=commitment(delta))  # fmt: skip
    atomic_write_json(out, obj)
    return obj
