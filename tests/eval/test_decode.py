"""The fast evaluation path gives the reference path's texts and scores.

Continuous-batching generation against `model.generate` on fixed batches, with rows that end at
different steps, prompts of different lengths, more prompts than slots (so rows leave and join
a live batch), stop strings and the pad = EOS mask quirk; scoring with the head run only where
a label needs it against full logits, bit for bit.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import numpy as np
import pytest
import torch

from mpu.errors import ConfigError
from mpu.eval.decode import unsupported_reason
from mpu.eval.flags import EvalFlags
from mpu.eval.primitives import greedy_generate, score_items
from mpu.text import encode_qa, pad_id_of
from toolkit import WORDS, eval_model, fmt_of


@pytest.fixture(scope="module")
def model(tokenizer):
    """A tiny random Llama with its weights tripled: greedy decoding then wanders through the
    vocabulary (the plain one repeats one token) and emits partial UTF-8 bytes."""
    model = eval_model(tokenizer, seed=1)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)
    return model


@pytest.fixture(scope="module")
def prompts(tokenizer):
    rng = np.random.default_rng(3)
    questions = [" ".join(rng.choice(WORDS, size=rng.integers(1, 12))) for _ in range(13)]
    return [encode_qa(tokenizer, q, "x", fmt=fmt_of(tokenizer)).prompt_ids for q in questions]


@contextlib.contextmanager
def _also_ends_at(model, token: int):
    """Make a frequent token end rows too, so rows finish at many different steps."""
    cfg = model.generation_config
    saved = cfg.eos_token_id
    base = saved if isinstance(saved, list) else [saved]
    cfg.eos_token_id = [t for t in base if t is not None] + [token]
    try:
        yield
    finally:
        cfg.eos_token_id = saved


def _generate(model, tokenizer, prompts, engine, **kw):
    kw = {"max_new_tokens": 24, "batch_size": 4, **kw}
    return greedy_generate(
        model, tokenizer, prompts, pad_id=pad_id_of(tokenizer), engine=engine, progress=False, **kw
    )


def _ending_token(model, prompts, steps: int = 12) -> int:
    """The token whose first greedy occurrence falls at the most different steps across rows."""
    first: dict[int, set[int]] = {}
    for p in prompts:
        ids, seen = torch.tensor([p]), set()
        with torch.no_grad():
            for step in range(steps):
                nxt = int(model(input_ids=ids).logits[0, -1].argmax())
                if nxt not in seen:
                    first.setdefault(nxt, set()).add(step)
                    seen.add(nxt)
                ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return max(first, key=lambda t: len(first[t]))


def test_continuous_batching_gives_generates_texts(model, tokenizer, prompts):
    assert len({len(p) for p in prompts}) > 3  # left padding differs between rows
    with _also_ends_at(model, _ending_token(model, prompts)):
        fast = _generate(model, tokenizer, prompts, "continuous")
        reference = _generate(model, tokenizer, prompts, "hf")
    lengths = {len(t) for t in fast}
    assert len(lengths) > 3, "rows should end at different steps"
    assert fast == reference


def test_continuous_batching_with_one_slot_and_many(model, tokenizer, prompts):
    reference = _generate(model, tokenizer, prompts, "hf")
    assert _generate(model, tokenizer, prompts, "continuous", batch_size=1) == reference
    assert _generate(model, tokenizer, prompts, "continuous", batch_size=64) == reference


def test_stop_strings_end_rows_with_the_same_cut(model, tokenizer, prompts):
    texts = _generate(model, tokenizer, prompts, "hf")
    grams = Counter(
        t[i : i + 3] for t in texts for i in range(2, len(t) - 3) if "\ufffd" not in t[i : i + 3]
    )
    stop = [grams.most_common(1)[0][0], "\n"]
    fast = _generate(model, tokenizer, prompts, "continuous", stopwords=stop)
    assert fast == _generate(model, tokenizer, prompts, "hf", stopwords=stop)
    assert fast != texts, "the stop string should cut some rows"


def test_logits_processing_falls_back_to_generate(model, tokenizer, prompts):
    cfg = model.generation_config
    cfg.repetition_penalty = 1.3
    try:
        assert "repetition_penalty" in unsupported_reason(model)
        fast = _generate(model, tokenizer, prompts, "continuous")
        assert fast == _generate(model, tokenizer, prompts, "hf")
    finally:
        cfg.repetition_penalty = 1.0
    assert unsupported_reason(model) is None


@pytest.mark.parametrize("plain_head", [True, False])
def test_scoring_with_the_head_trimmed_is_bitwise_the_full_logits(
    model, tokenizer, monkeypatch, plain_head
):
    from mpu.eval import primitives

    if not plain_head:  # the generic path: HF's logits_to_keep from the first needed position
        monkeypatch.setattr(primitives, "plain_head", lambda model: False)
    assert primitives._scoring_path(model, False) == ("rows" if plain_head else "tail")
    rng = np.random.default_rng(4)
    enc = [
        encode_qa(
            tokenizer,
            " ".join(rng.choice(WORDS, size=rng.integers(1, 10))),
            " ".join(rng.choice(WORDS, size=rng.integers(1, 10))),
            fmt=fmt_of(tokenizer),
        )
        for _ in range(9)
    ]
    kw = {"pad_id": pad_id_of(tokenizer), "batch_size": 4, "progress": False}
    fast = score_items(model, enc, **kw)
    full = score_items(model, enc, full_logits=True, **kw)
    for a, b in zip(fast, full, strict=True):
        assert a.avg_loss == b.avg_loss
        for name in ("token_logprobs", "token_preds", "token_labels", "token_z"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_engine_flag_is_validated():
    assert EvalFlags().engine == "fast"
    with pytest.raises(ConfigError, match="engine"):
        EvalFlags(engine="turbo")


def test_sliding_window_caches_fall_back_to_generate():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, vocab_size=64,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8)  # fmt: skip
    assert "DynamicSlidingWindowLayer" in unsupported_reason(Gemma2ForCausalLM(cfg))
