"""Model-facing primitives: batched scoring (one forward pass per batch, fp32 logits) and batched
greedy generation with the KV cache (docs/metrics.md).

Everything derived from a forward pass — length-normalised answer probability, token
log-probs on the scored positions, argmax predictions (extraction strength) and the per-token
Min-K++ statistics — comes from `score_items`, so a suite can compute each encoding once and
reuse it across metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mpu.logs import progress_bar
from mpu.text import IGNORE_INDEX, Encoded, collate


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


def _row_stats(logits: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor) -> ItemStats:
    """Stats of one padded row from its fp32 logits (T, V)."""
    pos = (labels != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    empty = np.zeros(0)
    if pos.numel() == 0:
        return ItemStats(float("nan"), empty, empty.astype(int), empty.astype(int), empty)
    scored = pos[pos >= 1]  # CE over shifted positions: logits[t-1] predicts token t
    lo = int(pos[0].clamp(min=1)) - 1
    hi = int(pos[-1]) - 1
    logp = torch.log_softmax(logits[lo : hi + 1].float(), dim=-1)
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


@torch.no_grad()
def score_items(
    model: torch.nn.Module,
    encoded: Sequence[Encoded],
    *,
    pad_id: int,
    batch_size: int = 32,
    mask_mode: str = "pad_id",
    desc: str = "scoring",
    progress: bool = True,
) -> list[ItemStats]:
    """Right-padded batched forward passes over `encoded`; one `ItemStats` per item, in order."""
    model.eval()
    device = model_device(model)
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
        ids = batch["input_ids"].to(device)
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits
        labels = batch["labels"].to(device)
        for r in range(len(items)):
            out.append(_row_stats(logits[r], ids[r], labels[r]))
        bar.update(len(items))
    bar.close()
    return out


class _StopOnStrings:
    """Stop once every row's recent tokens contain one of the stop strings (upstream
    MultiTokenEOSCriteria: look back len(stop ids) + 2 tokens, decode, test substring)."""

    def __init__(self, tokenizer, stopwords: Sequence[str], prompt_len: int, batch: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.words = [
            (w, len(tokenizer.encode(w, add_special_tokens=False)) + 2) for w in stopwords
        ]
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
    desc: str = "generating",
    progress: bool = True,
) -> list[str]:
    """Greedy, left-padded, KV-cached generation; returns the cut, stripped continuation texts."""
    from transformers import StoppingCriteriaList

    model.eval()
    device = model_device(model)
    eos = tokenizer.eos_token_id
    extra = {}
    if getattr(model.generation_config, "eos_token_id", None) is None and eos is not None:
        extra["eos_token_id"] = eos
    texts: list[str] = []
    bar = progress_bar(
        total=len(prompts), desc=desc, leave=False, unit="item", disable=not progress
    )
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
        decoded = tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
        texts += [cut_generation(t, tokenizer, stopwords) for t in decoded]
        bar.update(len(idx))
    bar.close()
    return texts


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
