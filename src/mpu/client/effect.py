"""Did a run move the model? The forget-set loss before and after, and the plain-words
verdict a run that changed nothing gets (docs/methods.md, "Defaults that unlearn")."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from mpu.client.train_config import ClientSettings

log = logging.getLogger("mpu.client")
# a relative change of the forget loss below this over a whole schedule is "did not move"
MOVED_LOSS = 0.01


@torch.no_grad()
def forget_loss(model: torch.nn.Module, items: Sequence, tokenizer: Any, limit: int = 64) -> float:
    """Token-mean cross-entropy of the first `limit` forget answers, in eval mode: the check
    that a run moved the model (a change below 1 % means it did not)."""
    from mpu.client.importance import item_batches
    from mpu.methods.common import answer_token_nll

    was = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in item_batches(items[:limit], tokenizer, 16):
            nll, mask = answer_token_nll(model, batch)
            total += float(nll.sum())
            count += int(mask.sum())
    finally:
        model.train(was)
    return total / max(count, 1)


def no_effect(logs: dict, changed_fraction: float | None, eff: ClientSettings) -> str | None:
    """Why a finished run did not move the model, in plain words naming the settings to change;
    None when it did. `changed_fraction`: share of weights whose stored value changed."""
    before, after = logs["forget_loss"]["before"], logs["forget_loss"]["after"]
    rel = abs(after - before) / max(abs(before), 1e-12)
    frozen = changed_fraction is not None and changed_fraction < 0.01
    steps = logs.get("steps") or []
    # a call that is one round of a longer schedule is held to its share of the 1 %
    share = min(len(steps) / max(logs.get("schedule_total_steps") or 1, 1), 1.0) if steps else 1.0
    if rel >= MOVED_LOSS * share and not frozen:
        return None
    if (
        steps
        and all(s["lr"] == 0 for s in steps)
        and steps[-1]["step"] < logs["schedule_total_steps"]
    ):
        # one round of a multi-round schedule whose steps all fell on the warmup's first point
        # (lr 0, HF's convention): nothing to fix, the next rounds train
        log.info("%s: this call's %d step(s) ran at lr 0 (start of the warmup); the model moves "
                 "in the next rounds", eff.method.name, len(steps))  # fmt: skip
        return None
    what = f"forget-set loss {before:.4f} → {after:.4f} ({100 * rel:.2f} % change)"
    if changed_fraction is not None:
        what += f", {100 * changed_fraction:.1f} % of the weights changed"
    dp = logs.get("dp_sgd")
    if dp:  # the noise, not the learning rate, is what held it (client/dp_loop.py)
        return (f"the {eff.method.name} run did not move the model under DP-SGD: {what}; its "
                f"noise is {dp['noise_to_signal']:.0f}x the largest signal its items can give "
                f"(z = {dp['noise_multiplier']:.2f} for epsilon {dp['epsilon']:.2f}). With AdamW "
                "the noise sets every coordinate's step and the signal is lost: try "
                "optimizer=sgd with a larger lr, fewer trainable entries (trainable=lora), a "
                "larger forget set per step (batch_size) or a larger epsilon")  # fmt: skip
    advice = [f"raise lr (now {eff.lr:g})"]
    if eff.precision in ("bf16_weights", "pure_bf16"):
        advice.append(f"use precision=fp32 (now {eff.precision}: bf16 rounds small updates away)")
    if eff.max_steps == 0:
        advice.append(f"or train longer (epochs, now {eff.epochs})")
    return f"the {eff.method.name} run did not move the model: {what}; " + ", ".join(advice)
