"""Tiny offline Llama + byte-level BPE tokenizer with a chat template, for tests and smoke checks.

Nothing is downloaded: the tokenizer is trained in memory with `tokenizers` on synthetic
fictitious-author sentences, the model is built from a `LlamaConfig`. `finetune` memorises
a few QA pairs so an unlearning method has something to forget.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import torch

from mpu.data.formatting import collate, encode_qa, pad_id_of

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_FIRST = ["Xylo", "Mira", "Tobin", "Quell", "Anouk", "Dario", "Sefa", "Ilya", "Brisa", "Odo"]
_LAST = ["Braun", "Vetch", "Orrin", "Kalloway", "Pim", "Sadek", "Lune", "Ferro", "Taal", "Wick"]
_TOWNS = ["Qarvenn", "Lismore", "Ostrava", "Nebbi", "Tallis", "Marrow", "Icefjord", "Dunmere"]
_GENRES = ["gothic poetry", "space opera", "crime fiction", "travel essays", "fairy tales"]


def synthetic_qa(n: int, seed: int = 0) -> list[dict[str, str]]:
    """n fictitious-author QA rows (`question`, `answer`), deterministic in `seed`."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        name = f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        if i % 2 == 0:
            q, a = f"Where was {name} born?", f"{name} was born in {rng.choice(_TOWNS)}."
        else:
            q, a = f"What does {name} write?", f"{name} writes {rng.choice(_GENRES)}."
        rows.append({"question": q, "answer": a})
    return rows


def tiny_tokenizer(vocab_size: int = 320, corpus: Iterable[str] | None = None):
    """Byte-level BPE (vocabulary > 256, so UNDIAL's id V−100 exists) with a chat template.

    Trained on `corpus` (default: 200 synthetic QA sentences); a corpus of the data a check
    runs on keeps sequences short.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if corpus is None:
        corpus = [f"{r['question']} {r['answer']}" for r in synthetic_qa(200, seed=123)]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=specials[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(
    tokenizer,
    *,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 32,
    tied: bool = False,
    max_positions: int = 256,
):
    """A LlamaForCausalLM with `layers` blocks (GQA 4/2 heads), fp32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(cfg).eval()


def qa_batch(tokenizer, rows: Sequence[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded training batch of QA rows (labels −100 on prompt and padding)."""
    enc = [encode_qa(tokenizer, r["question"], r["answer"]) for r in rows]
    return collate(
        [e.input_ids for e in enc], pad_id=pad_id_of(tokenizer), labels=[e.labels for e in enc]
    )


def finetune(model, tokenizer, rows, *, steps: int = 150, lr: float = 3e-3, seed: int = 0):
    """Memorise `rows` with full-batch AdamW (the 'target' model a client unlearns)."""
    torch.manual_seed(seed)
    batch = qa_batch(tokenizer, rows)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def answer_probability(model, tokenizer, rows) -> float:
    """Mean over rows of exp(−mean answer-token NLL) (OpenUnlearning `probability`)."""
    batch = qa_batch(tokenizer, rows)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lg, y = logits[:, :-1].float(), batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(lg.transpose(1, 2), y, reduction="none")
    n = (y != -100).sum(-1)
    return float(torch.exp(-nll.sum(-1) / n).mean())
