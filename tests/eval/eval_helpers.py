"""Tiny offline tokenizer and Llama builders shared by the eval tests (uniquely named module,
so it never collides with other test folders' conftest modules)."""

from __future__ import annotations

import random

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

WORDS = [
    "the",
    "author",
    "was",
    "born",
    "in",
    "paris",
    "and",
    "wrote",
    "many",
    "books",
    "about",
    "dragons",
    "rivers",
    "war",
    "love",
    "her",
    "his",
    "father",
    "mother",
    "worked",
    "as",
    "a",
    "doctor",
    "teacher",
    "painter",
    "what",
    "is",
    "name",
    "of",
    "where",
    "did",
    "first",
    "novel",
    "award",
    "won",
    "prize",
    "city",
    "year",
    "genre",
    "fantasy",
    "mystery",
    "science",
    "fiction",
    "poetry",
]


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]


def build_tokenizer(vocab_size: int = 320):
    """A small byte-level BPE trained on a fixed word list; EOS = <|end|>, pad = <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([*corpus(), "Question: Answer: \n"], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2):
    """The methods' tiny Llama with tied embeddings and room for long completions."""
    from mpu.methods.testing import tiny_llama

    return tiny_llama(
        tokenizer, seed=seed, layers=layers, hidden=hidden, tied=True, max_positions=512
    )
