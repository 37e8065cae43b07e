"""The trainer's loop under DP-SGD (`dp.unit=example`, mpu/privacy/dp_sgd.py), in its own file.

It replaces the ordinary loop's fixed batches by Poisson-sampled ones and runs each sampled
forget item as a micro-batch of one (with its paired retain item and IDK line), so every
item's gradient can be clipped on its own; any method whose loss is a mean over items gets
its exact per-item gradient this way. The optimizer step is the ordinary one (`_step`),
taken on the noised mean. The step count is the ordinary run's (E·⌈N/(b·g)⌉ at the expected
batch b·g), so a DP run and a plain one spend the same number of steps.
"""

from __future__ import annotations

import math

from mpu.client.batches import poisson_batch, single_items
from mpu.errors import ConfigError
from mpu.logs import progress_bar
from mpu.privacy.dp_sgd import ExampleClipper


def check_dp_sgd(plan, procs_count: int) -> None:
    """What DP-SGD cannot be combined with, refused before the model is touched."""
    eff = plan.eff
    why = None
    if procs_count > 1 or eff.sharding == "fsdp":
        why = "runs on one process (per-item clipping is not split across processes)"
    elif eff.trainable == "salient":
        why = "cannot use trainable=salient: its mask is chosen from the forget set itself"
    elif eff.mia_adversary.enabled:
        why = "cannot train a membership adversary on the forget items it protects"
    elif plan.spec.new_state is not None:
        why = f"cannot run {plan.spec.name}: its per-step state is not clipped per item"
    if why:
        raise ConfigError(f"dp.unit=example (DP-SGD) {why}")


def accounting(plan, trainable: int) -> dict:
    """q, the job's steps, z and ε for this run (docs/threat-model.md, "Differential privacy"),
    and `noise_to_signal`: the run's summed noise over the largest signal its items can give,
    z·√d / (q·N·√T) for d trainable entries and this run's T steps (every sampled item's
    clipped gradient pointing the same way every step)."""
    eff, dp = plan.eff, plan.eff.dp
    expected = eff.batch_size * eff.grad_accum
    rate = min(1.0, expected / len(plan.forget))
    steps = max(plan.total, plan.total_local)  # every round of the job, at this run's q
    z = dp.example_z(rate, steps)
    batch = rate * len(plan.forget)
    return {"unit": "example", "clip": dp.clip, "noise_multiplier": z, "sample_rate": rate,
            "expected_batch": batch, "steps": steps, "copies": dp.copies,
            "delta": dp.delta, "epsilon": dp.example_spent(rate, steps, z),
            "noise_to_signal": z * math.sqrt(trainable) / (batch * math.sqrt(plan.total_local))}  # fmt: skip


def dp_loop(run, opt, plan, tokenizer, order_seed, progress, on_step):
    """Poisson-sampled steps, per-item clipped gradients, the noised mean stepped on."""
    from mpu.client.trainer import _autocast, _builder, _Loop, _step

    eff = plan.eff
    acct = accounting(plan, sum(p.numel() for _, p in opt.named))
    clipper = ExampleClipper([p for _, p in opt.named], clip=eff.dp.clip,
                             noise_multiplier=acct["noise_multiplier"],
                             expected_batch=acct["expected_batch"])  # fmt: skip
    builder = _builder(plan, tokenizer)
    seed = eff.seed if order_seed is None else order_seed
    out = _Loop([], 0, 0, 0, builder, dp=acct)
    autocast = _autocast(run, eff)
    run.train_model.train()
    bar = progress_bar(total=plan.total_local, desc=f"{plan.spec.name} unlearning (DP-SGD)",
                       disable=not progress)  # fmt: skip
    try:
        opt.opt.zero_grad(set_to_none=True)
        while out.step < plan.total_local:
            global_step = eff.schedule_offset_steps + out.step
            sampled = poisson_batch(len(plan.forget), len(plan.retain), plan.choices,
                                    acct["sample_rate"], seed=seed, step=global_step)  # fmt: skip
            window = _items(run, plan, builder, sampled, clipper, out, autocast)
            stats = clipper.release()
            out.last_epoch = int(out.step * acct["sample_rate"])  # epochs done, in expectation
            out.step += 1
            rec = _step(run, opt, plan, window, out.last_epoch, out.step)
            rec.update(stats)
            out.steps.append(rec)
            bar.update(1)
            if on_step is not None:
                on_step(out.step, plan.total_local)
    finally:
        bar.close()
    return out


def _items(run, plan, builder, sampled, clipper, out, autocast) -> list[dict]:
    """Each sampled item's loss backpropagated alone and clipped; the step's records (a step
    that sampled nothing records zero items and no loss)."""
    from mpu.client.trainer import _backward

    window = []
    for mb in single_items(sampled):
        out.micro_batches += 1
        # weight g cancels the trainer's 1/g: each item's own, unscaled gradient
        window.append(_backward(run, plan, builder.build(mb), autocast,
                                out.step, weight=plan.eff.grad_accum))  # fmt: skip
        clipper.add()
    return window or [{"tokens": 0}]
