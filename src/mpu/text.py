"""The tokenisation contract: how a QA pair or a text becomes token ids and labels.

Training (target/retain preparation, client unlearning) and evaluation import this one module,
so a metric always scores the tokens the model was trained on. It also owns the *prompt
format*, the one setting that decides those tokens for chat models: chat template or plain
`Question:/Answer:` tags, the system prompt and the date string a Llama-3 template prints.
`resolve_prompt` picks OpenUnlearning's per-model defaults (its `configs/model/*.yaml`
`template_args`) unless the user sets them; the resolved `PromptFormat` is recorded with every
evaluation and training run. Semantics of the ids: docs/metrics.md, "Tokenisation".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mpu.config import field
from mpu.errors import ConfigError

IGNORE_INDEX = -100
TEMPLATES = ("auto", "chat", "plain")
HELPFUL = "You are a helpful assistant."
LLAMA3_DATE = "10 Apr 2025"


@dataclass(frozen=True)
class Encoded:
    """One tokenized item: full ids, labels (-100 on the prompt) and the prompt ids alone."""

    input_ids: list[int]
    labels: list[int]
    prompt_ids: list[int]

    @property
    def n_answer_tokens(self) -> int:
        return sum(1 for y in self.labels if y != IGNORE_INDEX)


@dataclass(frozen=True)
class PromptFormat:
    """A resolved prompt format (OpenUnlearning's `template_args`).

    `chat`: the tokenizer's chat template with an optional system message and date string.
    `plain`: `system_prefix + user_start + q + user_end + assistant_start` then the answer,
    tokenized with the tokenizer's special tokens (Llama-2-hf: `Question: q\\nAnswer: a`).
    """

    template: str
    system_prompt: str | None = None
    date_string: str | None = None
    user_start: str = "Question: "
    user_end: str = "\n"
    assistant_start: str = "Answer: "
    assistant_end: str = "\n\n"
    system_prefix: str = ""
    rule: str = "explicit"  # which default picked it (for logs and reports)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PromptConfig:
    """User settings of the prompt format; unset fields take the model family's default."""

    template: str = field(
        "auto", help="auto (the model family's OpenUnlearning default) | chat | plain"
    )
    system_prompt: str | None = field(
        None, help="system message of chat prompts (unset: family default; '' for none)"
    )
    date_string: str | None = field(
        None, help="date given to the chat template (unset: family default, Llama-3 '10 Apr 2025')"
    )

    def __post_init__(self) -> None:
        if self.template not in TEMPLATES:
            raise ConfigError(
                f"prompt.template={self.template!r}: expected one of {', '.join(TEMPLATES)}"
            )


# (rule name, model types, marker in the chat template or None, template, system, date)
_FAMILY_DEFAULTS: tuple[
    tuple[str, tuple[str, ...], str | None, str, str | None, str | None], ...
] = (
    ("Llama-3.x Instruct", ("llama",), "<|start_header_id|>", "chat", HELPFUL, LLAMA3_DATE),
    ("Llama-2 chat ([INST] tags)", ("llama",), "[INST]", "plain", None, None),
    ("ChatML (SmolLM2)", ("llama", "mistral"), "<|im_start|>", "chat", HELPFUL, None),
    ("Zephyr", ("mistral",), "<|user|>", "chat", HELPFUL, LLAMA3_DATE),
    ("Qwen2/2.5/3", ("qwen2", "qwen3"), None, "chat", HELPFUL, None),
    ("Phi-3/3.5", ("phi3",), None, "chat", HELPFUL, None),
    ("Gemma (no system role)", ("gemma", "gemma2", "gemma3_text"), None, "chat", None, None),
)
_INST_TAGS = {
    "user_start": "[INST] ",
    "user_end": " [/INST]",
    "assistant_start": "",
    "assistant_end": " ",
}


def uses_chat_template(tokenizer) -> bool:
    """Whether the tokenizer ships a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def family_default(tokenizer, model_type: str | None) -> PromptFormat:
    """OpenUnlearning's default for this model: chat template, system prompt, date string.

    No chat template → plain `Question:/Answer:` (Llama-2-7b-hf). A chat template of a family
    OpenUnlearning configures → its `template_args`; any other chat template (the embedded tiny
    model) → that template with no system prompt.
    """
    template = getattr(tokenizer, "chat_template", None) or ""
    if not isinstance(template, str):  # several named templates: use the default one
        template = str(template)
    for rule, types, marker, kind, system, date in _FAMILY_DEFAULTS:
        if model_type in types and (marker is None or marker in template):
            if kind == "plain":
                return PromptFormat("plain", rule=rule, **_INST_TAGS)
            if not template:
                break
            return PromptFormat("chat", system, date, rule=rule)
    if template:
        return PromptFormat("chat", rule="chat template as shipped (no system prompt)")
    return PromptFormat("plain", rule="no chat template: Question:/Answer: (Llama-2-hf)")


def resolve_prompt(
    tokenizer, model_type: str | None, config: PromptConfig | None = None
) -> PromptFormat:
    """The prompt format for this tokenizer: the family default with the user's settings on top."""
    config = config or PromptConfig()
    fmt = family_default(tokenizer, model_type)
    if config.template != "auto" and config.template != fmt.template:
        if config.template == "chat" and not uses_chat_template(tokenizer):
            raise ConfigError("prompt.template=chat but the tokenizer has no chat template")
        fmt = PromptFormat(config.template, rule="explicit")
    changes: dict[str, Any] = {}
    if config.system_prompt is not None:
        changes["system_prompt"] = config.system_prompt or None
    if config.date_string is not None:
        changes["date_string"] = config.date_string or None
    if changes:
        fmt = dataclasses.replace(fmt, **changes, rule=f"{fmt.rule} + explicit settings")
    if fmt.template == "plain" and fmt.date_string:
        raise ConfigError(
            "prompt.date_string only applies to chat templates (prompt.template=chat)"
        )
    return fmt


def _chat_ids(tokenizer, messages: list[dict], *, generation: bool, date: str | None) -> list[int]:
    extra = {"date_string": date} if date is not None else {}
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation, **extra
    )
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def encode_qa(
    tokenizer,
    question: str,
    answer: str,
    *,
    fmt: PromptFormat,
    icl: Sequence[tuple[str, str]] = (),
    max_length: int = 512,
    prompt_cache: dict | None = None,
) -> Encoded:
    """Encode one QA item (with optional in-context pairs) for scoring or training.

    Ids are those of OpenUnlearning's `preprocess_chat_instance` for the same format: labels
    are -100 on the first len(prompt_ids) positions and EOS is appended when the full ids do
    not end with it. Unlike upstream, chat ids are truncated to `max_length` too (a runaway row
    must not stall training). `prompt_cache` (a dict the caller keeps for one tokenizer) saves
    re-rendering the prompt of a question scored with several answers (TOFU scores seven).
    """
    key = (question, tuple(icl), fmt, max_length)
    cached = prompt_cache.get(key) if prompt_cache is not None else None
    full_ids, prompt_ids = _encode_qa_ids(tokenizer, question, answer, fmt, icl, max_length, cached)
    if prompt_cache is not None:
        prompt_cache[key] = prompt_ids
    eos = tokenizer.eos_token_id
    if eos is not None and (not full_ids or full_ids[-1] != eos):
        full_ids = [*full_ids, eos]
    n_prompt = min(len(prompt_ids), len(full_ids))
    labels = [IGNORE_INDEX] * n_prompt + list(full_ids[n_prompt:])
    return Encoded(list(full_ids), labels, list(prompt_ids))


def _encode_qa_ids(tokenizer, question, answer, fmt, icl, max_length, prompt_ids):
    """(full ids, prompt ids) of a QA item; `prompt_ids` when already known."""
    if fmt.template == "chat":
        messages: list[dict] = []
        if fmt.system_prompt:
            messages.append({"role": "system", "content": fmt.system_prompt})
        for q, a in icl:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": question})
        date = fmt.date_string
        if prompt_ids is None:
            prompt_ids = _chat_ids(tokenizer, messages, generation=True, date=date)[:max_length]
        full_ids = _chat_ids(
            tokenizer,
            [*messages, {"role": "assistant", "content": answer}],
            generation=False,
            date=date,
        )[:max_length]
    else:
        turn = lambda q: fmt.user_start + q + fmt.user_end + fmt.assistant_start  # noqa: E731
        prefix = fmt.system_prefix + "".join(turn(q) + a + fmt.assistant_end for q, a in icl)
        prompt_text = prefix + turn(question)
        if prompt_ids is None:
            prompt_ids = tokenizer(prompt_text, add_special_tokens=True)["input_ids"][:max_length]
        full_ids = tokenizer(prompt_text + answer, add_special_tokens=True)["input_ids"][
            :max_length
        ]
    return full_ids, prompt_ids


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
