"""A client run's plan before any model is touched: its settings resolved for the model, how
many optimizer steps it makes, its prompt format, and one LR schedule over R rounds
(docs/methods.md, docs/protocol.md §6)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from mpu.client.batches import check_rows, encode_rows
from mpu.client.train_config import ClientSettings, ClientTrainConfig
from mpu.errors import ConfigError
from mpu.text import PromptFormat, resolve_prompt


def settings_of(
    cfg: ClientTrainConfig | ClientSettings, n_params: int | None = None
) -> ClientSettings:
    """Resolve a config once at an entry point; settings pass through unchanged."""
    return cfg if isinstance(cfg, ClientSettings) else cfg.resolve(n_params)


def plan_steps(n_forget: int, eff: ClientSettings) -> int:
    """Optimizer steps one call makes on `n_forget` items (after dropping answerless ones).

    epoch_flush: E·⌈⌈N/b⌉/g⌉; hf: E·max(⌊⌈N/b⌉/g⌋, 1) (HF Trainer); max_steps > 0 wins.
    A runner spanning R rounds passes `total_steps = R·plan_steps(...)`.
    """
    if eff.max_steps:
        return eff.max_steps
    n_mb = math.ceil(n_forget / eff.batch_size)
    if eff.accumulation == "epoch_flush":
        return eff.epochs * math.ceil(n_mb / eff.grad_accum)
    return eff.epochs * max(n_mb // eff.grad_accum, 1)


def prompt_format(model_type: str | None, tokenizer: Any, eff: ClientSettings) -> PromptFormat:
    """The prompt format the client trains with (the same rule as the evaluation's)."""
    return resolve_prompt(tokenizer, model_type, eff.prompt)


def usable_items(
    tokenizer: Any, rows: Sequence[dict], eff: ClientSettings, fmt: PromptFormat
) -> int:
    """How many rows keep at least one answer token (the N that `plan_steps` expects)."""
    check_rows(rows, "forget")
    return len(encode_rows(tokenizer, rows, fmt=fmt, max_length=eff.max_length)[0])


def round_schedule(n_forget: int, cfg: ClientSettings, rounds: int) -> list[dict[str, int]]:
    """`schedule_offset_steps` / `total_steps` per round for one LR schedule over R·E epochs.

    docs/methods.md: warm-up at the start of round 1, decay to the end of round R; pass
    `settings.replace(**round_schedule(...)[r])` for round r (0-based).
    """
    if rounds < 1:
        raise ConfigError(f"rounds={rounds}: must be >= 1")
    per = plan_steps(n_forget, cfg)
    return [{"schedule_offset_steps": r * per, "total_steps": rounds * per} for r in range(rounds)]
