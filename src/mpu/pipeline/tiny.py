"""The default tiny model: a byte-level BPE tokenizer trained offline and a small Llama.

Nothing here downloads anything: the tokenizer is trained with `tokenizers` on the benchmark
text, and the model is a `LlamaConfig`-built `LlamaForCausalLM`. The tokenizer carries a
minimal chat template (`<|user|>q<|assistant|>a<|eos|>`), so `encode_qa` takes the chat path
exactly as for a real instruct model, and a BOS post-processor, so plain-text encoding
(`encode_completion`) gets BOS as docs/metrics.md requires.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

BOS, EOS, PAD, USER, ASSISTANT, SYSTEM = (
    "<|bos|>",
    "<|eos|>",
    "<|pad|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
)
SPECIAL_TOKENS = [PAD, BOS, EOS, USER, ASSISTANT, SYSTEM]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}<|system|>{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% else %}<|assistant|>{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@dataclass(frozen=True)
class TinyGeometry:
    """Shape of the default tiny Llama (sized for memorising TOFU in minutes on 2 CPU cores)."""

    vocab_size: int = 3072
    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 256


def train_tokenizer(texts: Iterable[str], vocab_size: int = 3072):
    """Train a byte-level BPE tokenizer on `texts`; returns a `PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        model_max_length=TinyGeometry.max_position_embeddings,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_llama(tokenizer, geometry: TinyGeometry | None = None, *, seed: int = 0):
    """A freshly initialised LlamaForCausalLM matching `tokenizer` (tied embeddings)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    g = geometry or TinyGeometry()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=g.hidden_size,
        intermediate_size=g.intermediate_size,
        num_hidden_layers=g.num_hidden_layers,
        num_attention_heads=g.num_attention_heads,
        num_key_value_heads=g.num_attention_heads,
        max_position_embeddings=g.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
