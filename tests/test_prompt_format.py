"""The prompt format: per-family OpenUnlearning defaults, explicit settings, and token ids equal
to OpenUnlearning's `preprocess_chat_instance` for a chat template that uses both the system
prompt and the date string (Llama-3.x Instruct's)."""

from __future__ import annotations

import pytest

from mpu.errors import ConfigError
from mpu.text import (
    HELPFUL,
    IGNORE_INDEX,
    LLAMA3_DATE,
    PromptConfig,
    encode_qa,
    family_default,
    resolve_prompt,
)
from toolkit import tiny_tokenizer

# the shape of Llama-3.x's template: a system header that always prints the date string
LLAMA3_LIKE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set sys = '' %}{% endif %}"
    "<|start_header_id|>system<|end_header_id|>\n\nToday Date: "
    "{{ date_string | default('26 Jul 2024') }}\n\n{{ sys }}<|eot_id|>"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def llama3_tok():
    tok = tiny_tokenizer(chat_template=LLAMA3_LIKE)
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}
    )
    tok.eos_token = "<|eot_id|>"
    return tok


def openunlearning_ids(tok, template_args: dict, prompts, responses, max_length=512):
    """OpenUnlearning's `preprocess_chat_instance` (chat path), re-derived from its definition:
    the whole chat through `apply_chat_template` (date passed when configured), the prompt =
    all but the last message with the generation prompt, EOS appended if missing, labels
    IGNORE on the prompt's length. Returns (input_ids, labels, generation input_ids)."""
    chat = []
    if template_args.get("system_prompt"):
        chat.append({"role": "system", "content": template_args["system_prompt"]})
    for p, r in zip(prompts, responses, strict=True):
        chat += [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
    date = template_args.get("date_string")
    extra = {"date_string": date} if date is not None else {}

    def ids(messages, gen):
        out = tok.apply_chat_template(
            messages, tokenize=True, add_generation_prompt=gen, return_dict=False, **extra
        )
        return list(out if isinstance(out, list) else out["input_ids"])

    chat_ids, prompt_ids = ids(chat, False), ids(chat[:-1], True)
    if chat_ids[-1] != tok.eos_token_id:
        chat_ids.append(tok.eos_token_id)
    labels = [IGNORE_INDEX] * len(prompt_ids) + chat_ids[len(prompt_ids) :]
    return chat_ids, labels, prompt_ids


def test_llama3_default_is_openunlearnings(llama3_tok):
    fmt = resolve_prompt(llama3_tok, "llama")
    assert (fmt.template, fmt.system_prompt, fmt.date_string) == ("chat", HELPFUL, LLAMA3_DATE)


def test_ids_equal_openunlearnings_preprocess_chat_instance(llama3_tok):
    fmt = resolve_prompt(llama3_tok, "llama")
    args = {"apply_chat_template": True, "system_prompt": HELPFUL, "date_string": LLAMA3_DATE}
    icl = [("Who wrote Dune?", "Frank Herbert."), ("Where is Qarvenn?", "On the coast.")]
    for q, a, shots in (("Where was Mira Vetch born?", "In Lismore.", []), ("Q?", "A.", icl)):
        enc = encode_qa(llama3_tok, q, a, fmt=fmt, icl=shots)
        ids, labels, gen = openunlearning_ids(
            llama3_tok, args, [p for p, _ in shots] + [q], [r for _, r in shots] + [a]
        )
        assert enc.input_ids == ids
        assert enc.labels == labels
        assert enc.prompt_ids == gen  # the generation prompt (ROUGE's input)
    text = llama3_tok.decode(enc.input_ids)
    assert f"Today Date: {LLAMA3_DATE}" in text and HELPFUL in text


def test_explicit_settings_win(llama3_tok):
    fmt = resolve_prompt(
        llama3_tok, "llama", PromptConfig(system_prompt="", date_string="1 Jan 2000")
    )
    assert (fmt.system_prompt, fmt.date_string) == (None, "1 Jan 2000")
    enc = encode_qa(llama3_tok, "Q?", "A.", fmt=fmt)
    assert "Today Date: 1 Jan 2000" in llama3_tok.decode(enc.input_ids)
    plain = resolve_prompt(llama3_tok, "llama", PromptConfig(template="plain"))
    enc = encode_qa(llama3_tok, "Q?", "A.", fmt=plain)
    assert "Question: Q?\nAnswer: A." in llama3_tok.decode(enc.input_ids, skip_special_tokens=True)


@pytest.mark.parametrize(
    ("model_type", "marker", "expected"),
    [
        ("qwen2", "<|im_start|>", ("chat", HELPFUL, None)),
        ("llama", "<|im_start|>", ("chat", HELPFUL, None)),  # SmolLM2 (ChatML)
        ("phi3", "<|end|>", ("chat", HELPFUL, None)),
        ("gemma", "<start_of_turn>", ("chat", None, None)),
        ("mistral", "<|user|>", ("chat", HELPFUL, LLAMA3_DATE)),  # Zephyr
        ("llama", "[INST]", ("plain", None, None)),  # Llama-2 chat: [INST] tags, no template
        ("llama", "<|user|>", ("chat", None, None)),  # an unknown template: as shipped
    ],
)
def test_family_defaults(model_type, marker, expected):
    tok = tiny_tokenizer(chat_template=f"{{# {marker} #}}{{{{ bos_token }}}}")
    fmt = family_default(tok, model_type)
    assert (fmt.template, fmt.system_prompt, fmt.date_string) == expected


def test_no_chat_template_means_plain_question_answer():
    tok = tiny_tokenizer()
    tok.chat_template = None
    fmt = family_default(tok, "llama")
    assert fmt.template == "plain"
    enc = encode_qa(tok, "Who?", "Me.", fmt=fmt)
    assert tok.decode(enc.input_ids, skip_special_tokens=True) == "Question: Who?\nAnswer: Me."
    with pytest.raises(ConfigError, match="no chat template"):
        resolve_prompt(tok, "llama", PromptConfig(template="chat"))
    with pytest.raises(ConfigError, match=r"prompt\.template"):
        PromptConfig(template="chatml")


def test_chat_ids_are_truncated_to_max_length(llama3_tok):
    fmt = resolve_prompt(llama3_tok, "llama")
    enc = encode_qa(llama3_tok, "word " * 2000, "answer", fmt=fmt, max_length=64)
    assert len(enc.input_ids) <= 65  # max_length, plus the EOS appended after truncation


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_a_prompt_cache_changes_no_id(llama3_tok, template):
    fmt = resolve_prompt(llama3_tok, "llama", PromptConfig(template=template))
    cache: dict = {}
    items = [(q, a) for q in ("Who?", "Where was she born?") for a in ("Me.", "Paris", "no")]
    for q, a in items * 2:
        for icl in ((), (("Why?", "Because."),)):
            fresh = encode_qa(llama3_tok, q, a, fmt=fmt, icl=icl)
            assert encode_qa(llama3_tok, q, a, fmt=fmt, icl=icl, prompt_cache=cache) == fresh
    assert len(cache) == 4  # one prompt per (question, in-context pairs)
