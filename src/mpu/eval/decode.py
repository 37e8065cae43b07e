"""Greedy decoding with continuous batching (docs/metrics.md, "How generation is run").

`model.generate` decodes a fixed batch until its longest row ends. On TOFU most answers end
within ~60 tokens and a few run to the 200-token cap, so most of a 32-row batch's steps are
spent on rows that have already ended. Here a row leaves the batch the step it ends and a
waiting prompt takes its place, so every step works on live rows and the batch stays full,
where a CPU's per-row cost is lowest (SmolLM2-135M: 44 ms per step for one row, 4 ms per row
at 32).

What is kept from `generate`: the argmax of fp32 logits, HF's position ids (cumsum of the
prompt's attention mask), the prompt mask as `collate` builds it, logits of the prompt's last
position only, and each row's tokens up to and including its EOS. What differs is only which
rows share a batch and how much left padding they carry, which can move logits in their last
bits; the texts are pinned identical to `generate`'s by tests and by
`benchmarks/eval_speed.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from mpu.text import collate

# generation_config fields whose non-default values add logits processing this loop lacks
_PROCESSING = {
    "repetition_penalty": (None, 1.0),
    "no_repeat_ngram_size": (None, 0),
    "min_length": (None, 0),
    "min_new_tokens": (None, 0),
    "bad_words_ids": (None,),
    "suppress_tokens": (None,),
    "begin_suppress_tokens": (None,),
    "forced_bos_token_id": (None,),
    "forced_eos_token_id": (None,),
    "sequence_bias": (None,),
    "encoder_repetition_penalty": (None, 1.0),
    "exponential_decay_length_penalty": (None,),
}


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why this loop cannot reproduce `generate` for `model` (None when it can)."""
    cfg = getattr(model, "generation_config", None)
    for name, defaults in _PROCESSING.items():
        if cfg is not None and getattr(cfg, name, None) not in defaults:
            return f"generation_config.{name} adds logits processing"
    if not forward_accepts(model, "cache"):
        return "the model's forward takes no `cache` argument"
    if getattr(model.config, "is_encoder_decoder", False):
        return "encoder-decoder model"
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    kinds = {type(layer) for layer in DynamicCache(config=model.config).layers}
    if kinds - {DynamicLayer}:  # sliding-window layers keep only their last tokens
        return f"cache layers {sorted(k.__name__ for k in kinds)} are not plain growing caches"
    return None


def forward_accepts(model: torch.nn.Module, name: str) -> bool:
    """Whether the model's forward takes the keyword `name` (e.g. HF's `logits_to_keep`)."""
    import inspect

    return name in inspect.signature(model.forward).parameters


class _LiveRows:
    """The rows being decoded: their KV cache, attention mask, next position, last token, and
    for each its prompt's index and the tokens generated so far."""

    def __init__(self) -> None:
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None
        self.last: torch.Tensor | None = None
        self.rows: list[int] = []
        self.out: list[list[int]] = []
        self.ended: list[bool] = []

    def __len__(self) -> int:
        return len(self.rows)

    def join(self, other: _LiveRows) -> None:
        """Add `other`'s rows, left-padding the shorter cache and mask to the longer."""
        if not self.rows:
            self.__dict__.update(other.__dict__)
            return
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat(
                [_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)]
            )
            mine.values = torch.cat(
                [_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)]
            )
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(other.mask, width, 1)])
        self.pos = torch.cat([self.pos, other.pos])
        self.last = torch.cat([self.last, other.last])
        self.rows += other.rows
        self.out += other.out
        self.ended += other.ended

    def keep(self, alive: list[int]) -> None:
        """Keep the rows at positions `alive` and drop leading columns no row attends to."""
        index = torch.tensor(alive, dtype=torch.long, device=self.mask.device)
        mask = self.mask[index]
        used = mask.any(0).nonzero()
        start = int(used[0]) if used.numel() else mask.shape[1]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, start:]
            layer.values = layer.values[index, :, start:]
        self.mask = mask[:, start:]
        self.pos, self.last = self.pos[index], self.last[index]
        self.rows = [self.rows[i] for i in alive]
        self.out = [self.out[i] for i in alive]
        self.ended = [False] * len(alive)

    def live(self) -> int:
        return len(self.rows) - sum(self.ended)


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [missing, 0]
    return F.pad(x, pad)


@torch.no_grad()
def _prefill(model, prompts, rows, *, pad_id, mask_mode, device, extra) -> _LiveRows:
    """Run the prompts of `rows` as one left-padded batch, as `generate`'s first step does
    (`extra`: `logits_to_keep=1` where the model takes it, as `generate` passes)."""
    from transformers import DynamicCache

    batch = collate([prompts[i] for i in rows], pad_id=pad_id, side="left", mask_mode=mask_mode)
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    live = _LiveRows()
    live.cache = DynamicCache(config=model.config)
    logits = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos,
        cache=live.cache,
        use_cache=True,
        **extra,
    ).logits
    live.mask, live.pos = mask, pos[:, -1] + 1
    live.last = logits[:, -1].float().argmax(-1)
    live.rows, live.out, live.ended = list(rows), [[] for _ in rows], [False] * len(rows)
    return live


@torch.no_grad()
def _step(model, live: _LiveRows) -> None:
    """Feed each row's last token and put its successor in `live.last`."""
    live.mask = torch.cat([live.mask, live.mask.new_ones(len(live), 1)], dim=1)
    logits = model(
        input_ids=live.last.unsqueeze(1),
        attention_mask=live.mask,
        position_ids=live.pos.unsqueeze(1),
        cache=live.cache,
        use_cache=True,
    ).logits
    live.pos = live.pos + 1
    live.last = logits[:, -1].float().argmax(-1)


def greedy_continuous(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: set[int],
    pad_id: int,
    slots: int = 32,
    mask_mode: str = "pad_id",
    stopped: Callable[[list[int]], bool] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Greedy continuations of `prompts` (token ids, EOS included when emitted), in order.

    At most `slots` rows decode together; waiting prompts are prefilled in groups once a
    quarter of the slots are free. `stopped(tokens)` may end a row early (stop strings)."""
    model.eval()
    device = next(model.parameters()).device
    results: list[list[int] | None] = [None] * len(prompts)

    refill_at = max(1, slots // 4)

    def collect(rows: _LiveRows) -> None:
        """Append each live row's new token and retire the rows that ended. Ended rows leave
        the batch in groups of `refill_at`: dropping one copies the whole KV cache."""
        for i, token in enumerate(rows.last.tolist()):
            if rows.ended[i]:
                continue
            out = rows.out[i]
            out.append(token)
            if token in eos_ids or len(out) >= max_new_tokens or (stopped and stopped(out)):
                results[rows.rows[i]] = out
                rows.ended[i] = True
                if on_done:
                    on_done(1)
        if sum(rows.ended) >= min(refill_at, len(rows)):
            rows.keep([i for i, e in enumerate(rows.ended) if not e])

    last_only = {"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}
    waiting = list(range(len(prompts)))
    live = _LiveRows()
    while waiting or live.live():
        free = slots - len(live)
        if waiting and (free >= refill_at or not live.live()):
            group, waiting = waiting[:free], waiting[free:]
            new = _prefill(model, prompts, group, pad_id=pad_id, mask_mode=mask_mode,
                           device=device, extra=last_only)  # fmt: skip
            collect(new)
            if new.live():
                live.join(new)
            continue
        _step(model, live)
        collect(live)
    return results  # type: ignore[return-value]
