"""Model-facing primitives: batched scoring (one forward pass per batch, fp32 logits) and batched
greedy generation with the KV cache (docs/metrics.md).

Everything derived from a forward pass — length-normalised answer probability, token
log-probs on the scored positions, argmax predictions (extraction strength) and the per-token
Min-K++ statistics — comes from `score_items`, so a suite can compute each encoding once and
reuse it across metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mpu.arch.families import plain_head
from mpu.eval.decode import forward_accepts, greedy_continuous, unsupported_reason
from mpu.logs import progress_bar
from mpu.text import IGNORE_INDEX, Encoded, collate

_log = logging.getLogger(__name__)


@dataclass
class ItemStats:
    """What one forward pass says about one encoded item.

    `avg_loss` averages the cross-entropy over all labelled tokens (NaN when there are none, as
    upstream); the `token_*` arrays cover the scored positions I_b = labelled positions except
    the last one (upstream drops the final EOS prediction).
    """

    avg_loss: float
    token_logprobs: np.ndarray
    token_preds: np.ndarray
    token_labels: np.ndarray
    token_z: np.ndarray  # Min-K++ standardised log-probs

    @property
    def prob(self) -> float:
        return float(np.exp(-self.avg_loss))


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (where inputs must go)."""
    return next(model.parameters()).device


def chunks(n: int, batch_size: int) -> Iterator[range]:
    """Consecutive index ranges of at most `batch_size` in data order (upstream DataLoader order)."""
    for start in range(0, n, batch_size):
        yield range(start, min(n, start + batch_size))


def _logit_span(pos: torch.Tensor) -> tuple[int, int]:
    """The positions lo..hi whose logits predict the labelled positions `pos` (non-empty):
    logits[t - 1] predicts token t, and position 0 is never predicted."""
    return int(pos[0].clamp(min=1)) - 1, int(pos[-1]) - 1


def _row_stats(
    logits: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor, offset: int = 0
) -> ItemStats:
    """Stats of one padded row from its logits, which cover positions `offset`.. of the row."""
    pos = (labels != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    empty = np.zeros(0)
    if pos.numel() == 0:
        return ItemStats(float("nan"), empty, empty.astype(int), empty.astype(int), empty)
    scored = pos[pos >= 1]  # CE over shifted positions: logits[t-1] predicts token t
    lo, hi = _logit_span(pos)
    logp = torch.log_softmax(logits[lo - offset : hi + 1 - offset].float(), dim=-1)
    tok = logp[scored - 1 - lo, ids[scored]] if scored.numel() else logp.new_zeros(0)
    avg_loss = float(-tok.sum() / pos.numel())
    keep = pos[:-1]  # I_b: drop the last labelled position (the final EOS)
    if keep.numel() == 0:
        return ItemStats(avg_loss, empty, empty.astype(int), empty.astype(int), empty)
    start, end = int(keep[0]), int(keep[-1])
    if start == 0:  # upstream slices from -1 here; never happens with our encoders
        start = 1
    rows = logp[start - 1 - lo : end - lo]  # contiguous slice, as upstream assumes
    tlp = rows.gather(1, ids[start : end + 1].unsqueeze(1)).squeeze(1)
    probs = rows.exp()
    mu = (probs * rows).sum(-1)
    var = (probs * rows.square()).sum(-1) - mu.square()
    z = (tlp - mu) / var.clamp(min=1e-6).sqrt()
    return ItemStats(
        avg_loss,
        tlp.double().cpu().numpy(),
        rows.argmax(-1).cpu().numpy(),
        labels[keep].cpu().numpy(),
        z.double().cpu().numpy(),
    )


def _needed_logits(labels: torch.Tensor) -> list[tuple[int, int]]:
    """Per row, the positions lo..hi whose logits predict its labelled tokens (hi < lo: none)."""
    spans = []
    for row in labels:
        pos = (row != IGNORE_INDEX).nonzero(as_tuple=True)[0]
        spans.append(_logit_span(pos) if pos.numel() else (0, -1))
    return spans


def _scoring_logits(model, ids, mask, labels, how: str) -> list[tuple[torch.Tensor, int]]:
    """Per row: logits covering every position a label needs, and the first position they cover.

    `full`: the model's forward as is. `rows`: the decoder, then the head on exactly the
    positions each row needs (plain-head families only). `tail`: HF's `logits_to_keep`, from
    the batch's first needed position on. Each computes the same bits where they overlap."""
    if how == "rows":
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        spans = _needed_logits(labels)
        picked = torch.cat([hidden[r, lo : hi + 1] for r, (lo, hi) in enumerate(spans)])
        logits = model.get_output_embeddings()(picked)
        sizes = [max(hi - lo + 1, 0) for lo, hi in spans]
        return list(zip(logits.split(sizes), (lo for lo, _ in spans), strict=True))
    if how == "tail":
        offset = min((lo for lo, hi in _needed_logits(labels) if hi >= lo), default=0)
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=ids.shape[1] - offset)
        return [(row, offset) for row in logits.logits]
    return [(row, 0) for row in model(input_ids=ids, attention_mask=mask).logits]


def _scoring_path(model: torch.nn.Module, full_logits: bool) -> str:
    if full_logits:
        return "full"
    if plain_head(model):
        return "rows"
    return "tail" if forward_accepts(model, "logits_to_keep") else "full"


@torch.no_grad()
def score_items(
    model: torch.nn.Module,
    encoded: Sequence[Encoded],
    *,
    pad_id: int,
    batch_size: int = 32,
    mask_mode: str = "pad_id",
    full_logits: bool = False,
    desc: str = "scoring",
    progress: bool = True,
) -> list[ItemStats]:
    """Right-padded batched forward passes over `encoded`; one `ItemStats` per item, in order.

    The head runs only on the positions whose logits a label needs: the prompt's and the
    padding's logits are never read, and on SmolLM2 the 49 152-wide head is a fifth of the
    forward pass. The logits it does compute are the same bits; `full_logits=True` computes
    them all (the reference path)."""
    model.eval()
    device = model_device(model)
    how = _scoring_path(model, full_logits)
    out: list[ItemStats] = []
    bar = progress_bar(
        total=len(encoded), desc=desc, leave=False, unit="item", disable=not progress
    )
    for idx in chunks(len(encoded), batch_size):
        items = [encoded[i] for i in idx]
        batch = collate(
            [e.input_ids for e in items],
            pad_id=pad_id,
            labels=[e.labels for e in items],
            mask_mode=mask_mode,
        )
        ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        mask = batch["attention_mask"].to(device)
        for r, (logits, offset) in enumerate(_scoring_logits(model, ids, mask, labels, how)):
            out.append(_row_stats(logits, ids[r], labels[r], offset))
        bar.update(len(items))
    bar.close()
    return out


def _stop_windows(tokenizer, stopwords: Sequence[str]) -> list[tuple[str, int]]:
    """Each stop word with how many last tokens upstream decodes to look for it: its id count + 2."""
    return [(w, len(tokenizer.encode(w, add_special_tokens=False)) + 2) for w in stopwords]


class _StopOnStrings:
    """Stop once every row's recent tokens contain one of the stop strings (upstream
    MultiTokenEOSCriteria: look back len(stop ids) + 2 tokens, decode, test substring)."""

    def __init__(self, tokenizer, stopwords: Sequence[str], prompt_len: int, batch: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.words = _stop_windows(tokenizer, stopwords)
        self.done = [[False] * batch for _ in stopwords]

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        gen = input_ids[:, self.prompt_len :]
        any_all_done = False
        for k, (word, look) in enumerate(self.words):
            texts = self.tokenizer.batch_decode(gen[:, -look:])
            self.done[k] = [d or word in t for d, t in zip(self.done[k], texts, strict=True)]
            any_all_done = any_all_done or all(self.done[k])
        return torch.full(
            (input_ids.shape[0],), any_all_done, dtype=torch.bool, device=input_ids.device
        )


def cut_generation(text: str, tokenizer, stopwords: Sequence[str]) -> str:
    """Cut a decoded generation at the decoded EOS and at each stop word, then strip.

    Upstream quirk kept: without an EOS token the stop words are ignored as well."""
    eos = tokenizer.eos_token_id
    words = [tokenizer.decode([eos]), *stopwords] if eos is not None else []
    for word in words:
        if word and word in text:
            text = text.split(word)[0]
    return text.strip()


def _eos_ids(model: torch.nn.Module, tokenizer) -> set[int]:
    """The ids that end a row in `generate`: the generation config's, else the tokenizer's."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}


def _stop_test(tokenizer, stopwords: Sequence[str]):
    """Per-row form of `_StopOnStrings`: a row is done once its last len(ids(word)) + 2 tokens,
    decoded, contain a stop word. Its cut text is then final, so it can leave the batch."""
    words = _stop_windows(tokenizer, stopwords)

    def stopped(tokens: list[int]) -> bool:
        return any(word in tokenizer.decode(tokens[-look:]) for word, look in words)

    return stopped if words else None


GENERATION_ENGINES = ("continuous", "hf")


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stopwords: Sequence[str] = (),
    pad_id: int,
    batch_size: int = 32,
    mask_mode: str = "pad_id",
    engine: str = "continuous",
    desc: str = "generating",
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of `prompts`, cut at EOS and stop words and stripped.

    `engine="continuous"` decodes with continuous batching (`mpu.eval.decode`, same texts);
    `"hf"` is `model.generate` on fixed left-padded batches, the reference it is checked
    against, and the fallback for models the loop does not cover."""
    if engine not in GENERATION_ENGINES:
        raise ValueError(f"generation engine must be one of {GENERATION_ENGINES}, not {engine!r}")
    if engine == "continuous" and (reason := unsupported_reason(model)):
        _log.info("generation: continuous batching unavailable (%s); using model.generate", reason)
        engine = "hf"
    bar = progress_bar(
        total=len(prompts), desc=desc, leave=False, unit="item", disable=not progress
    )
    if engine == "hf":
        decoded = _generate_hf(
            model, tokenizer, prompts, max_new_tokens, stopwords, pad_id, batch_size, mask_mode, bar
        )
    else:
        tokens = greedy_continuous(
            model,
            prompts,
            max_new_tokens=max_new_tokens,
            eos_ids=_eos_ids(model, tokenizer),
            pad_id=pad_id,
            slots=batch_size,
            mask_mode=mask_mode,
            stopped=_stop_test(tokenizer, stopwords),
            on_done=bar.update,
        )
        decoded = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    bar.close()
    return [cut_generation(t, tokenizer, stopwords) for t in decoded]


def _generate_hf(
    model, tokenizer, prompts, max_new_tokens, stopwords, pad_id, batch_size, mask_mode, bar
) -> list[str]:
    """`model.generate` on consecutive left-padded batches (the reference path)."""
    from transformers import StoppingCriteriaList

    model.eval()
    device = model_device(model)
    eos = tokenizer.eos_token_id
    extra = {}
    if getattr(model.generation_config, "eos_token_id", None) is None and eos is not None:
        extra["eos_token_id"] = eos
    decoded: list[str] = []
    for idx in chunks(len(prompts), batch_size):
        batch = collate([prompts[i] for i in idx], pad_id=pad_id, side="left", mask_mode=mask_mode)
        ids = batch["input_ids"].to(device)
        kwargs = dict(extra)
        if stopwords:
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_StopOnStrings(tokenizer, stopwords, ids.shape[1], ids.shape[0])]
            )
        out = model.generate(
            ids,
            attention_mask=batch["attention_mask"].to(device),
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            max_new_tokens=max_new_tokens,
            use_cache=True,
            pad_token_id=eos if eos is not None else pad_id,
            **kwargs,
        )
        decoded += tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        bar.update(len(idx))
    return decoded


def ground_truth_text(tokenizer, encoded: Encoded) -> str:
    """Upstream ground truth: decode(full ids) with the decoded prompt removed by string replace."""
    kw = {"skip_special_tokens": True}
    full = tokenizer.decode(encoded.input_ids, **kw)
    prompt = tokenizer.decode(encoded.prompt_ids, **kw)
    return full.replace(prompt, "").strip()


def labelled_text(tokenizer, encoded: Encoded) -> str:
    """Decoded labelled tokens (special tokens skipped): the text the ZLib attack compresses."""
    return tokenizer.decode(
        [y for y in encoded.labels if y != IGNORE_INDEX], skip_special_tokens=True
    )


def gradnorm_scores(
    model: torch.nn.Module,
    encoded: Sequence[Encoded],
    *,
    pad_id: int,
    p: float = 2.0,
    mask_mode: str = "pad_id",
    desc: str = "gradnorm",
    progress: bool = True,
) -> list[float]:
    """GradNorm attack, batch 1, model in train mode: mean over parameter tensors of ||grad||_p of
    the mean negative token log-prob over I_b. Restores eval mode and requires_grad afterwards."""
    device = model_device(model)
    params = list(model.parameters())
    saved = [q.requires_grad for q in params]
    for q in params:
        q.requires_grad_(True)
    model.train()
    scores: list[float] = []
    try:
        for e in progress_bar(encoded, desc=desc, leave=False, unit="item", disable=not progress):
            batch = collate([e.input_ids], pad_id=pad_id, mask_mode=mask_mode)
            ids = batch["input_ids"].to(device)
            labels = torch.tensor(e.labels, device=device)
            mask = batch["attention_mask"].to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[0].float()
            keep = (labels != IGNORE_INDEX).nonzero(as_tuple=True)[0][:-1]
            if keep.numel() == 0:
                scores.append(float("nan"))
                continue
            start, end = max(1, int(keep[0])), int(keep[-1])
            lp = torch.log_softmax(logits[start - 1 : end], -1)
            lp = lp.gather(1, ids[0, start : end + 1].unsqueeze(1)).squeeze(1)
            model.zero_grad(set_to_none=True)
            (-lp.mean()).backward()
            norms = [q.grad.detach().norm(p=p) for q in params if q.grad is not None]
            scores.append(float(torch.stack(norms).mean()))
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
        for q, s in zip(params, saved, strict=True):
            q.requires_grad_(s)
    return scores
