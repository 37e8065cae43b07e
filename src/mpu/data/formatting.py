"""Turn QA pairs and completions into token ids and labels, exactly as OpenUnlearning does.

One module owns this so training (target/retain preparation, client unlearning) and
evaluation see the same tokens: a metric is only comparable when the labels it scores are
the labels the model was trained on. Semantics: METRICS.md §1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    """One tokenized item: full ids, labels (-100 on the prompt) and the prompt ids alone."""

    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int]

    @property
    def n_answer_tokens(self) -> int:
        return sum(1 for y in self.labels if y != IGNORE_INDEX)


def _chat_ids(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt
    )
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def uses_chat_template(tokenizer) -> bool:
    """A tokenizer with a chat template is treated as a chat model (`apply_chat_template: true`)."""
    return bool(getattr(tokenizer, "chat_template", None))


def encode_qa(
    tokenizer,
    question: str,
    answer: str,
    *,
    icl: Sequence[tuple[str, str]] = (),
    system_prompt: str | None = None,
    max_length: int = 512,
    chat: bool | None = None,
) -> Encoded:
    """Encode one QA item (with optional in-context pairs) for scoring or training.

    Labels are -100 on the first len(prompt_ids) positions; EOS is appended when the full ids
    do not end with it. Chat ids are not truncated (as upstream); plain ids are.
    """
    chat = uses_chat_template(tokenizer) if chat is None else chat
    eos = tokenizer.eos_token_id
    if chat:
        messages: list[dict] = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        for q, a in icl:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        prompt_ids = _chat_ids(tokenizer, messages, add_generation_prompt=True)
        full_ids = _chat_ids(
            tokenizer,
            [*messages, {"role": "assistant", "content": answer}],
            add_generation_prompt=False,
        )
    else:
        prefix = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in icl)
        prompt_text = prefix + f"Question: {question}\nAnswer: "
        prompt_ids = tokenizer(prompt_text, add_special_tokens=True)["input_ids"][:max_length]
        full_ids = tokenizer(prompt_text + answer, add_special_tokens=True)["input_ids"][
            :max_length
        ]
    if eos is not None and (not full_ids or full_ids[-1] != eos):
        full_ids = [*full_ids, eos]
    n_prompt = min(len(prompt_ids), len(full_ids))
    labels = [IGNORE_INDEX] * n_prompt + list(full_ids[n_prompt:])
    return Encoded(list(full_ids), labels, list(prompt_ids))


def encode_completion(
    tokenizer,
    prefix: str | None,
    text: str | None,
    *,
    insert_space: bool = False,
    max_length: int = 2048,
) -> Encoded:
    """Encode a prefix + continuation (MUSE verbmem/privleak, text corpora).

    Labels are -100 on the first max(1, len(prefix ids)) tokens; the full ids are truncated to
    len(prefix ids) + max_length.
    """
    prefix = prefix or ""
    text = text or ""
    joined = prefix + (" " if insert_space and prefix else "") + text
    prefix_ids = tokenizer(prefix, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(joined, add_special_tokens=True)["input_ids"][
        : len(prefix_ids) + max_length
    ]
    n_prompt = min(max(1, len(prefix_ids)), len(full_ids))
    labels = [IGNORE_INDEX] * n_prompt + list(full_ids[n_prompt:])
    return Encoded(list(full_ids), labels, list(prefix_ids))


def pad_id_of(tokenizer) -> int:
    """Pad id, or EOS when the tokenizer has none (upstream behaviour)."""
    pad = tokenizer.pad_token_id
    return tokenizer.eos_token_id if pad is None else pad


def collate(
    rows: Sequence[Sequence[int]],
    *,
    pad_id: int,
    side: str = "right",
    labels: Sequence[Sequence[int]] | None = None,
    mask_mode: str = "pad_id",
) -> dict[str, torch.Tensor]:
    """Pad a batch of id lists; labels padded with -100.

    `mask_mode="pad_id"` reproduces OpenUnlearning (mask = ids != pad id, which also masks
    in-prompt EOS tokens when pad = EOS); `"padding"` masks padding positions only.
    """
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', not {side!r}")
    if not rows:
        raise ValueError("cannot collate an empty batch")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    pad_mask = torch.zeros((len(rows), width), dtype=torch.long)
    lab = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(list(r), dtype=torch.long)
        pad_mask[i, sl] = 1
        if labels is not None:
            lab[i, sl] = torch.tensor(list(labels[i]), dtype=torch.long)
    if mask_mode == "pad_id":
        attention = (ids != pad_id).long()
    elif mask_mode == "padding":
        attention = pad_mask
    else:
        raise ValueError(f"mask_mode must be 'pad_id' or 'padding', not {mask_mode!r}")
    out = {"input_ids": ids, "attention_mask": attention}
    if labels is not None:
        out["labels"] = lab
    return out
