"""The fine-tuning loop that builds the target, retain and base models.

Plain PyTorch on top of `mpu.text` (the single QA → ids/labels encoder), so the models are
trained on exactly the tokens the metrics later score (scoring itself is `mpu.eval`'s job).
Batches are bucketed by length (little padding: CPU time is the budget), the schedule is
linear warm-up then cosine decay, and a tqdm bar shows progress.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from mpu.text import IGNORE_INDEX, Encoded, PromptFormat, collate, encode_qa


def encode_rows(
    tokenizer, rows: Sequence[dict], *, fmt: PromptFormat, answer_key: str = "answer"
) -> list[Encoded]:
    """Encode QA rows (question + `answer_key`) with `encode_qa`; drop items with no labels."""
    items = [encode_qa(tokenizer, r["question"], r[answer_key], fmt=fmt) for r in rows]
    return [e for e in items if e.n_answer_tokens > 0]


def _batches(items: Sequence[Encoded], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Length-bucketed batches in random order (shuffle, sort within windows, chunk)."""
    order = list(range(len(items)))
    rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: len(items[i].input_ids))
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@dataclass
class TrainStats:
    """What a training run reports: last-epoch mean loss, tokens seen, seconds, tokens/s."""

    final_loss: float
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def train_lm(
    model,
    items: Sequence[Encoded],
    *,
    pad_id: int,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    warmup_frac: float = 0.05,
    seed: int = 0,
    desc: str = "train",
    progress: bool = True,
    position: int = 0,
    on_epoch_end: Callable[[int, float], None] | None = None,
) -> TrainStats:
    """Train `model` in place on encoded items (answer-only labels); returns TrainStats."""
    from mpu.logs import progress_bar

    if not items:
        raise ValueError(f"{desc}: nothing to train on")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    device = next(model.parameters()).device  # batches follow the model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(items) / batch_size)
    total = max(1, steps_per_epoch * epochs)
    warmup = max(1, int(warmup_frac * total))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress_ = (step - warmup) / max(1, total - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress_))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    tokens, step, t0 = 0, 0, time.perf_counter()
    epoch_loss = float("nan")
    bar = progress_bar(
        total=total, desc=desc, unit="step", disable=not progress, leave=False, position=position
    )
    for epoch in range(epochs):
        loss_sum, n_batches = 0.0, 0
        for idx in _batches(items, batch_size, rng):
            batch = collate(
                [items[i].input_ids for i in idx],
                pad_id=pad_id,
                labels=[items[i].labels for i in idx],
                mask_mode="padding",
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = answer_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            tokens += int(batch["attention_mask"].sum())
            loss_sum += float(loss.detach())
            n_batches += 1
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_batches:.3f}")
        epoch_loss = loss_sum / max(1, n_batches)
        if on_epoch_end is not None:
            on_epoch_end(epoch, epoch_loss)
            model.train()
    bar.close()
    model.eval()
    return TrainStats(epoch_loss, tokens, time.perf_counter() - t0)


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (answer) positions.

    The LM head runs only on those positions when the model's logits are a plain projection
    of the decoder's last hidden state: half of a QA item's tokens are prompt, and the vocab
    projection is ~40 % of a tiny model's FLOPs, so this is ~20 % of the training time.
    Models with a logit transform (Gemma-2 soft-capping) take the full-logits path.
    """
    shift_labels = batch["labels"][:, 1:]
    head = model.get_output_embeddings()
    plain = getattr(model.config, "final_logit_softcapping", None) is None
    if plain and head is not None and hasattr(model, "get_decoder"):
        hidden = model.get_decoder()(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        mask = shift_labels != IGNORE_INDEX
        logits = head(hidden[:, :-1][mask]).float()
        return torch.nn.functional.cross_entropy(logits, shift_labels[mask])
    from mpu.methods.common import batch_ce

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return batch_ce(logits.float(), batch["labels"])
