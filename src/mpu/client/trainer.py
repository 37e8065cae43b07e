"""The client's local unlearning loop: one method, one copy, fresh optimizer per call.

`train_unlearning` validates everything (method, hyperparameters, data fields, IDK file,
trainable scope, RMU module) before the first forward pass, then runs the profile's
accumulation semantics (docs/methods.md) with a seeded data order shared by every call with
the same `order_seed` (docs/protocol.md §6, B21). The reference model is passed in explicitly (B27);
by default it is a frozen copy of the model this call starts from — the only model a real
client has (F1/B10).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mpu.client.adapters import (
    AdapterOffReference,
    attach_lora,
    disable_checkpointing,
    enable_checkpointing,
    merge_lora,
)
from mpu.client.batches import BatchBuilder, encode_rows, iterate
from mpu.client.checks import validate_inputs
from mpu.client.distributed import current_processes
from mpu.client.effect import forget_loss
from mpu.client.frozen import place, reference_model_for
from mpu.client.optim import MasterWeights, build_optimizer, lr_factor, select_trainable
from mpu.client.plan import plan_steps, prompt_format, settings_of
from mpu.client.sharding import local_parameters
from mpu.client.train_config import ClientSettings, ClientTrainConfig
from mpu.devices import resolve_device
from mpu.errors import ConfigError, DataError
from mpu.logs import progress_bar
from mpu.text import PromptFormat

log = logging.getLogger("mpu.client")


@dataclass
class TrainResult:
    """The trained model (same object as passed in), per-step logs and the effective config."""

    model: torch.nn.Module
    logs: dict[str, Any]
    step_count: int
    effective_config: dict[str, Any] = field(default_factory=dict)


def train_unlearning(
    model: torch.nn.Module,
    tokenizer: Any,
    forget_rows: Sequence[dict],
    retain_rows: Sequence[dict] | None,
    cfg: ClientTrainConfig | ClientSettings,
    *,
    reference_model: torch.nn.Module | None = None,
    idk_answers: Sequence[str] | None = None,
    order_seed: int | None = None,
    progress: bool = True,
    on_step: Callable[[int, int], None] | None = None,
    teacher_model: torch.nn.Module | None = None,
    holdout_rows: Sequence[dict] | None = None,
) -> TrainResult:
    """Unlearn `forget_rows` from `model` in place and return it with logs.

    Rows are dicts with `question`/`answer` (QA, TOFU) or `text` (corpus chunks, MUSE/WMDP).
    `order_seed` (default `cfg.seed`) fixes batches, retain pairing and IDK draws: give all m
    copies of a round the same value. `reference_model` defaults to a frozen deep copy of
    `model` as received (policy `copy`); with `cfg.reference='clean'` the caller must pass the
    clean model and a ThreatModelWarning is issued. The model is converted in place to the
    training dtype (bf16 for pure_bf16 / bf16_weights, else fp32); requires_grad flags are
    restored at the end. Raises ConfigError / DataError before any forward pass on bad input.
    `teacher_model`: Distill's teacher (a model that never saw the forget set). `holdout_rows`:
    the client's never-seen items, read by the membership adversary (`mia_adversary`).

    The steps, each its own function: plan the run (`_plan`), prepare the model and its
    reference (`_prepare`), build the optimizer and, for `trainable=salient`, the mask
    (`_optimizer`), run the loop (`_loop`, one optimizer step in `_step`), restore the model and
    report (`_finish`, `_logs`).
    """
    plan = _plan(model, tokenizer, forget_rows, retain_rows, idk_answers, cfg,
                 (reference_model, teacher_model))  # fmt: skip
    run = _prepare(model, plan, reference_model, teacher_model)
    if plan.eff.mia_adversary.enabled:
        run.adversary = _adversary(plan, tokenizer, holdout_rows, order_seed)
    loss_before = forget_loss(run.train_model, plan.forget, tokenizer)
    if run.sharded:  # the root keeps its parameters gathered after a forward: the optimizer
        run.train_model.reshard()  # must hold the sharded ones
    torch.manual_seed(plan.eff.seed)
    det = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    # On CUDA, atomics make some kernels (index_add, embedding backward, …) run-to-run
    # different, and the m copies of a round must be trained alike. On CPU those kernels are
    # already deterministic (same bits with the switch on or off, tests/client), while the
    # switch routes the embedding backward through a sort-based path that costs a small
    # model a tenth of its step: so it is set for CUDA only.
    torch.use_deterministic_algorithms(str(run.device).startswith("cuda"), warn_only=True)
    was_training = model.training
    opt = _optimizer(run, plan, tokenizer)
    run_loop = _loop
    if plan.eff.dp.on_examples:
        from mpu.client.dp_loop import dp_loop as run_loop
    try:
        loop = run_loop(run, opt, plan, tokenizer, order_seed, progress, on_step)
    finally:
        _finish(model, run, plan, det, was_training)
    logs = _logs(plan, run, opt, loop)
    logs["forget_loss"] = {
        "before": loss_before,
        "after": forget_loss(model, plan.forget, tokenizer),
    }
    if run.sharded:  # the caller gets a whole model back (every process gathers once)
        from mpu.client.sharding import gather

        model = gather(model)
    return TrainResult(model, logs, loop.step, plan.eff.to_log())


@dataclass
class _Plan:
    """What a run will do, settled before the model is touched."""

    eff: ClientSettings
    spec: Any
    hp: Any
    procs: Any
    per_process_accum: int
    fmt: PromptFormat
    forget: list
    f_rows: list
    f_drop: int
    retain: list
    idk: list
    total_local: int
    warmup: int
    total: int
    alternates: list | None = None  # AltPO: each kept forget row's alternate answers

    @property
    def choices(self) -> int:
        """How many answers the `alternate` draw picks from (IDK list or the longest row's)."""
        return len(self.idk) or max(map(len, self.alternates or [[]]))


def _plan(model, tokenizer, forget_rows, retain_rows, idk_answers, cfg, frozen) -> _Plan:
    """Settings resolved for this model, every input validated and encoded, the schedule;
    `frozen` = (reference model, teacher model) as the caller passed them."""
    eff = settings_of(cfg, model.num_parameters() if hasattr(model, "num_parameters") else None)
    if eff.defaults_rule:
        log.info("%s: %s", eff.method.name, eff.defaults_rule)
    spec, hp, use_retain = validate_inputs(
        model, tokenizer, forget_rows, retain_rows, idk_answers, eff, *frozen
    )
    procs = current_processes()
    if eff.dp.on_examples and eff.max_grad_norm:
        log.info("dp.unit=example: per-item clipping at dp.clip=%g replaces max_grad_norm=%g",
                 eff.dp.clip, eff.max_grad_norm)  # fmt: skip
        eff = eff.replace(max_grad_norm=0.0)
    if procs.count > 1 and (spec.new_state is not None or eff.mia_adversary.enabled):
        what = "the membership adversary" if eff.mia_adversary.enabled else spec.name
        raise ConfigError(f"{what} keeps per-step state (a dual variable, an adversary) that "
                          "several processes would each move differently; run it on one process")  # fmt: skip
    per_process_accum = eff.grad_accum
    if procs.count > 1:  # one step = g micro-batches on each of N processes (client/distributed)
        eff = eff.replace(grad_accum=eff.grad_accum * procs.count)
    fmt = prompt_format(getattr(model.config, "model_type", None), tokenizer, eff)
    forget, f_rows, f_drop = encode_rows(tokenizer, forget_rows, fmt=fmt, max_length=eff.max_length)
    if not forget:
        raise DataError("forget set: every item has zero answer tokens after tokenization")
    total_local = plan_steps(len(forget), eff)
    warmup = eff.warmup_steps
    if warmup is None:
        warmup = int(eff.warmup_epochs * len(forget) // (eff.batch_size * eff.grad_accum))
    total = eff.total_steps or total_local
    if eff.schedule_offset_steps + total_local > total:
        raise ConfigError(
            f"schedule_offset_steps={eff.schedule_offset_steps} + {total_local} steps exceeds "
            f"total_steps={total}"
        )
    plan = _Plan(eff, spec, hp, procs, per_process_accum, fmt, forget, f_rows, f_drop,
                 list(retain_rows) if use_retain else [],
                 list(idk_answers or ()) if spec.needs_idk else [],
                 total_local, warmup, total,
                 [list(r["alternate"]) for r in f_rows] if spec.needs_alternates else None)  # fmt: skip
    if eff.dp.on_examples:
        from mpu.client.dp_loop import check_dp_sgd

        check_dp_sgd(plan, procs.count)
    return plan


@dataclass
class _Run:
    """The model as it trains: its device, its reference, its LoRA wrapper if any."""

    device: str
    flags: dict[str, bool]
    ref: Any
    peft_model: Any
    train_model: torch.nn.Module
    sharded: bool = False
    extras: dict = field(default_factory=dict)  # state (Method.new_state), teacher (Distill)
    adversary: Any = None  # mia_adversary: the MembershipAdversary


def _prepare(model, plan: _Plan, reference_model, teacher_model=None) -> _Run:
    """Move and cast the model, make the reference (before LoRA: it is the starting copy),
    attach adapters, turn on checkpointing."""
    eff = plan.eff
    device = plan.procs.device(resolve_device(eff.device, "client training"))
    model.to(device)
    dtype = torch.bfloat16 if eff.precision in ("pure_bf16", "bf16_weights") else torch.float32
    for p in model.parameters():  # parameters only: fp32 buffers (RoPE inv_freq) stay fp32
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ref = (
        reference_model_for(model, reference_model, eff)
        if plan.spec.uses_reference(plan.hp)
        else None
    )
    peft_model = None
    if eff.trainable == "lora":
        gpus = [torch.device(device).index or 0] if device.startswith("cuda") else []
        with torch.random.fork_rng(devices=gpus):  # the same A init on every copy of a round
            torch.manual_seed(eff.seed)
            peft_model = attach_lora(model, eff.lora)
    if ref == "adapters_off":
        ref = AdapterOffReference(peft_model)
    if eff.gradient_checkpointing:
        enable_checkpointing(model)
    sharded = eff.sharding == "fsdp" and plan.procs.count > 1
    if sharded:  # after the reference is copied: it stays whole (on reference_device)
        from mpu.client.sharding import shard

        shard(model)
    elif eff.sharding == "fsdp":
        log.warning("sharding=fsdp with one process shards nothing (--num-processes N)")
    train_model = peft_model if peft_model is not None else model
    extras = {}
    if plan.spec.new_state:
        extras["state"] = plan.spec.new_state(plan.hp)
    if plan.spec.needs_teacher:
        extras["teacher"] = place(teacher_model, model, eff)
    return _Run(device, flags, ref, peft_model, train_model, sharded, extras)


@dataclass
class _Optim:
    named: list
    masters: Any
    params: list
    opt: torch.optim.Optimizer
    sched: Any
    mask: Any = None  # trainable=salient: the SalientMask over `named`
    mask_info: dict | None = None


def _optimizer(run: _Run, plan: _Plan, tokenizer) -> _Optim:
    """Only the trainable scope requires grad; the optimizer (on fp32 masters for
    bf16_weights) and the warm-up/decay schedule continued from `schedule_offset_steps`;
    for trainable=salient, the mask from the copy's importance."""
    eff = plan.eff
    named = select_trainable(run.train_model, eff.trainable)
    in_scope = {n for n, _ in named}
    for n, p in run.train_model.named_parameters():
        p.requires_grad_(n in in_scope)
    masters = MasterWeights(named) if eff.precision == "bf16_weights" else None
    opt_named = masters.named if masters else named
    opt = build_optimizer(run.train_model, opt_named, eff)
    offset, warmup, total = eff.schedule_offset_steps, plan.warmup, plan.total
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: lr_factor(offset + i, warmup=warmup, total=total, schedule=eff.schedule)
    )
    out = _Optim(named, masters, [p for _, p in opt_named], opt, sched)
    if eff.trainable == "salient":
        out.mask, out.mask_info = _salient_mask(run, plan, tokenizer, opt_named)
    return out


def _salient_mask(run: _Run, plan: _Plan, tokenizer, opt_named):
    """The localized update's mask (client/salient.py): importance of the forget items against
    as many retain items (the first ones: every copy of a round uses the same), on the copy."""
    from mpu.client.salient import build_mask

    retain = []
    if plan.retain:
        rows = plan.retain[: len(plan.forget)]
        retain = encode_rows(tokenizer, rows, fmt=plan.fmt, max_length=plan.eff.max_length)[0]
    return build_mask(run.train_model, _model_named(run, opt_named), plan.forget, retain,
                      tokenizer, plan.eff.salient, seed=plan.eff.seed,
                      step_named=opt_named)  # fmt: skip


def _model_named(run: _Run, opt_named):
    """The model's own parameters under the optimizer's names (the masters are fp32 copies
    that no forward pass reads)."""
    own = dict(run.train_model.named_parameters())
    return [(n, own[n]) for n, _ in opt_named]


@dataclass
class _Loop:
    steps: list[dict[str, float]]
    step: int
    micro_batches: int
    last_epoch: int
    builder: BatchBuilder
    dp: dict | None = None  # dp.unit=example: the run's accounting (client/dp_loop.py)


def _loop(run: _Run, opt: _Optim, plan: _Plan, tokenizer, order_seed, progress, on_step) -> _Loop:
    """Micro-batches in the seeded order; an optimizer step at each window's end (the
    profile's accumulation rule); this process computes the micro-batches it owns."""
    eff, procs = plan.eff, plan.procs
    autocast = _autocast(run, eff)
    builder = _builder(plan, tokenizer)
    stream = iterate(len(plan.forget), len(plan.retain), plan.choices, eff.batch_size,
                     seed=(eff.seed if order_seed is None else order_seed))  # fmt: skip
    out = _Loop([], 0, 0, 0, builder)
    window: list[dict[str, float]] = []
    in_window = 0
    run.train_model.train()
    bar = progress_bar(total=plan.total_local, desc=f"{plan.spec.name} unlearning",
                       disable=not progress)  # fmt: skip
    try:
        opt.opt.zero_grad(set_to_none=True)
        while out.step < plan.total_local:
            epoch, k, mb, per_epoch = next(stream)
            out.last_epoch = epoch
            out.micro_batches += 1
            batch = builder.build(mb)  # every process builds: the order digest stays shared
            if procs.owns(in_window):
                window.append(_backward(run, plan, batch, autocast, out.step))
            in_window += 1
            if "state" in run.extras and k + 1 == per_epoch:
                run.extras["state"].end_epoch(epoch + 1)
            if eff.accumulation == "epoch_flush":
                do_step = (k + 1) % eff.grad_accum == 0 or k + 1 == per_epoch
            else:
                do_step = out.micro_batches % eff.grad_accum == 0 or (
                    per_epoch <= eff.grad_accum and k + 1 == per_epoch
                )
            if not do_step:
                continue
            if run.sharded:  # every process runs as many passes as the busiest (sharding.py)
                for _ in range(_passes_short(plan.procs, in_window)):
                    _backward(run, plan, batch, autocast, out.step, weight=0.0)
            in_window = 0
            out.step += 1
            out.steps.append(_step(run, opt, plan, window, epoch, out.step))
            window = []
            bar.update(1)
            bar.set_postfix(loss=f"{out.steps[-1]['loss']:.4f}")
            if on_step is not None:
                on_step(out.step, plan.total_local)
    finally:
        bar.close()
    return out


def _autocast(run: _Run, eff: ClientSettings):
    """bf16 autocast for precision=bf16-mixed, else nothing."""
    if eff.precision == "bf16-mixed":
        return torch.autocast(device_type=torch.device(run.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _builder(plan: _Plan, tokenizer) -> BatchBuilder:
    """The micro-batch builder over the run's encoded forget items and raw retain rows."""
    return BatchBuilder(
        tokenizer, plan.forget, plan.f_rows, plan.retain, plan.idk, fmt=plan.fmt,
        max_length=plan.eff.max_length, alternates=plan.alternates,
    )  # fmt: skip


def _adversary(plan: _Plan, tokenizer, holdout_rows, order_seed):
    """The membership adversary over the encoded holdout rows (client/adversary.py)."""
    from mpu.client.adversary import MembershipAdversary

    if not holdout_rows:
        raise ConfigError("mia_adversary.weight > 0 needs the client's holdout items "
                          "(holdout_rows; `mpu client unlearn` loads them)")  # fmt: skip
    items = encode_rows(tokenizer, holdout_rows, fmt=plan.fmt, max_length=plan.eff.max_length)[0]
    seed = plan.eff.seed if order_seed is None else order_seed
    return MembershipAdversary(plan.eff.mia_adversary, items, tokenizer, seed)


def _passes_short(procs, window: int) -> int:
    """How many fewer micro-batches of a `window` this process owns than the busiest one."""
    return -(-window // procs.count) - len(range(procs.index, window, procs.count))


def _backward(
    run: _Run, plan: _Plan, batch, autocast, step: int, weight: float = 1.0
) -> dict[str, float]:
    """One micro-batch's loss, backpropagated with weight/g; its logs. Weight 0 is a sharded
    process's filler pass: the collectives run, nothing is added."""
    with autocast:
        loss, logs = plan.spec.loss(run.train_model, batch, run.ref, plan.hp, **run.extras)
        if run.adversary is not None and weight:
            term, more = run.adversary.term(run.train_model, batch["forget"])
            loss, logs = loss + term, {**logs, **more}
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{plan.spec.name}: non-finite loss {float(loss)} at step {step}")
    (loss * (weight / plan.eff.grad_accum)).backward()
    return {**logs, "tokens": _tokens(batch)}


def _step(run: _Run, opt: _Optim, plan: _Plan, window: list[dict], epoch: int, step: int) -> dict:
    """Sum the processes' gradients, clip, step, schedule; the step's record."""
    eff = plan.eff
    if not run.sharded:  # sharded: the backward passes already summed them (reduce-scatter)
        plan.procs.sum_gradients([p for _, p in opt.named])
    if opt.masters:
        opt.masters.load_grads()
    if opt.mask is not None:
        opt.mask.mask_gradients()
        opt.mask.before_step()
    if eff.max_grad_norm:
        gn = torch.nn.utils.clip_grad_norm_(opt.params, eff.max_grad_norm)
    elif run.sharded:  # the global norm over every process's shards
        gn = torch.nn.utils.get_total_norm([p.grad for p in opt.params if p.grad is not None])
    else:
        gn = torch.linalg.vector_norm(
            torch.stack([p.grad.float().norm() for p in opt.params if p.grad is not None])
        )
    gn = gn.full_tensor() if hasattr(gn, "full_tensor") else gn
    lr = opt.opt.param_groups[0]["lr"]
    opt.opt.step()
    if opt.mask is not None:
        opt.mask.after_step()
    if opt.masters:
        opt.masters.write_back()
    opt.sched.step()
    opt.opt.zero_grad(set_to_none=True)
    run.train_model.zero_grad(set_to_none=True)
    # this process's micro-batches (process 0 always has the window's first one)
    rec = {k: sum(w.get(k, 0.0) for w in window) / len(window) for k in window[0]}
    rec.update(step=eff.schedule_offset_steps + step, epoch=epoch, lr=lr, grad_norm=float(gn),
               tokens=int(sum(w["tokens"] for w in window)))  # fmt: skip
    return rec


def _finish(model, run: _Run, plan: _Plan, det: tuple, was_training: bool) -> None:
    """Whatever happened: determinism switch back, checkpointing off, LoRA merged into the
    dense copy, the caller's requires_grad flags and train/eval mode restored."""
    torch.use_deterministic_algorithms(det[0], warn_only=det[1])
    if plan.eff.gradient_checkpointing:
        disable_checkpointing(model)
    if run.peft_model is not None:
        merge_lora(run.peft_model)  # `model` is now the merged dense copy
    for n, p in model.named_parameters():
        p.requires_grad_(run.flags[n])
    model.train(was_training)


def _logs(plan: _Plan, run: _Run, opt: _Optim, loop: _Loop) -> dict[str, Any]:
    """The run's record: per-step logs, counts, the order digest, what was trained where."""
    eff = plan.eff
    logs = {
        "steps": loop.steps,
        "micro_batches": loop.micro_batches,
        "epochs_touched": loop.last_epoch + 1,
        "n_forget": len(plan.forget),
        "n_retain": len(plan.retain),
        "dropped_empty": {"forget": plan.f_drop},
        "retain_answerless_used": loop.builder.retain_answerless,
        "order_digest": loop.builder.order_digest,
        "warmup_steps": plan.warmup,
        "schedule_total_steps": plan.total,
        "reference": (eff.reference if run.ref is not None else None),
        "trainable_tensors": len(opt.named),
        "trainable_parameters": sum(p.numel() for _, p in opt.named),
        "device": str(run.device),
        "num_processes": plan.procs.count,
        "sharding": "fsdp" if run.sharded else "none",
        "parameters_per_process": local_parameters(run.train_model),
        "grad_accum_per_process": plan.per_process_accum,
    }
    if opt.mask_info is not None:
        logs["salient"] = opt.mask_info
    if loop.dp is not None:
        logs["dp_sgd"] = loop.dp
    if plan.spec.name == "RMU":
        logs["rmu_steering_seed"] = plan.hp.steering_seed
    if run.peft_model is not None:
        logs["lora_targets"] = sorted(run.peft_model.peft_config["default"].target_modules)
    logs["prompt_format"] = plan.fmt.to_dict()
    return logs


def _tokens(batch) -> int:
    """Non-padding tokens of a batch (every `attention_mask` in it, however nested)."""
    if isinstance(batch, dict):
        if "attention_mask" in batch and isinstance(batch["attention_mask"], torch.Tensor):
            return int(batch["attention_mask"].sum())
        return sum(_tokens(v) for v in batch.values())
    if isinstance(batch, list | tuple):
        return sum(_tokens(v) for v in batch)
    return 0
