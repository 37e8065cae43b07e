"""The one testing toolkit: tiny offline tokenizers, tiny models of every supported family,
saved model pairs, crafted deltas and small fine-tunes. Nothing here ships in the wheel.

The tokenizer is the product's own (`mpu.pipeline.tiny.train_tokenizer`, the demo model's
byte-level BPE with its chat template) trained on a small corpus; tests that need another chat
template pass one.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from mpu.text import PromptFormat, collate, encode_qa, family_default, pad_id_of

# a template whose user turns also end with EOS (the Llama-3 pad = EOS mask quirk needs one)
EOS_AFTER_EVERY_TURN = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
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
_FIRST = ["Xylo", "Mira", "Tobin", "Quell", "Anouk", "Dario", "Sefa", "Ilya", "Brisa", "Odo"]
_LAST = ["Braun", "Vetch", "Orrin", "Kalloway", "Pim", "Sadek", "Lune", "Ferro", "Taal", "Wick"]
_TOWNS = ["Qarvenn", "Lismore", "Ostrava", "Nebbi", "Tallis", "Marrow", "Icefjord", "Dunmere"]
_GENRES = ["gothic poetry", "space opera", "crime fiction", "travel essays", "fairy tales"]


# ------------------------------------------------------------------------------ text
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


def word_corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(n)]


def tiny_tokenizer(
    vocab_size: int = 320, corpus: Iterable[str] | None = None, chat_template: str | None = None
):
    """The product's byte-level BPE trained on `corpus` (default: 200 synthetic QA sentences).

    The vocabulary exceeds 256, so UNDIAL's wrapped id V−100 exists.
    """
    from mpu.pipeline.tiny import train_tokenizer

    if corpus is None:
        corpus = [f"{r['question']} {r['answer']}" for r in synthetic_qa(200, seed=123)]
    tok = train_tokenizer(list(corpus), vocab_size)
    tok.model_max_length = 4096
    if chat_template is not None:
        tok.chat_template = chat_template
    return tok


def fmt_of(tokenizer) -> PromptFormat:
    """The prompt format the product picks for a tiny model (its chat template as shipped)."""
    return family_default(tokenizer, "llama")


def qa_batch(tokenizer, rows: Sequence[dict[str, str]]) -> dict[str, torch.Tensor]:
    """Right-padded training batch of QA rows (labels −100 on prompt and padding)."""
    enc = [encode_qa(tokenizer, r["question"], r["answer"], fmt=fmt_of(tokenizer)) for r in rows]
    return collate(
        [e.input_ids for e in enc], pad_id=pad_id_of(tokenizer), labels=[e.labels for e in enc]
    )


# ------------------------------------------------------------------------------ models
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


# ------------------------------------------------------------------------------ families
_COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=160,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def family_configs() -> dict:
    """One small config per supported family, each exercising its special layout."""
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GemmaConfig,
        GPTNeoXConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    gqa = dict(_COMMON, num_key_value_heads=2)
    return {
        "llama": LlamaConfig(**gqa),
        "mistral": MistralConfig(**gqa),
        "qwen2": Qwen2Config(**gqa),
        "qwen3": Qwen3Config(**gqa, head_dim=16),
        "gemma": GemmaConfig(**gqa, head_dim=32),  # head_dim ≠ hidden/heads
        "gemma2": Gemma2Config(**gqa, head_dim=32),
        "gemma3_text": Gemma3TextConfig(**gqa, head_dim=32),
        "phi3": Phi3Config(**gqa, partial_rotary_factor=0.5),
        "gpt_neox": GPTNeoXConfig(**_COMMON, rotary_pct=0.25),
    }


def build_pair(
    config, root: Path, *, seed: int = 0, dtype=torch.float32, delta: float = 0.02
) -> tuple[Path, Path]:
    """Save (model, base) folders under `root`; norm gains randomised so q/k-norm maps matter.

    The "fine-tuned" model is the base plus a small perturbation of every tensor, so
    RMS(θ − θ_base) > 0 in every block as with a real fine-tune.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    model.to(dtype).save_pretrained(root / "base")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(delta * torch.randn_like(p))
    model.to(dtype).save_pretrained(root / "model")
    return root / "model", root / "base"


def logits_of(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(ids).logits


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def snapshot(folder: Path) -> dict[str, str]:
    """Content hash of every file under `folder` (the lock file is created empty and never changes)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_delta(
    copy: Path,
    path: Path,
    value=lambda name, t: torch.zeros_like(t),
    dtype=torch.float32,
    ticket=None,
):
    """A delta for `copy` whose tensors are value(name, zeros) — lets tests craft bad updates."""
    from mpu.io.checkpoint import Checkpoint
    from mpu.io.delta import delta_metadata, read_ticket
    from mpu.io.safetensors_stream import SafetensorsWriter, TensorSpec

    ck = Checkpoint(copy)
    tensors = {
        n: value(n, torch.zeros(ck.spec(n).shape, dtype=torch.float32)).to(dtype)
        for n in ck.names()
    }
    specs = [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()]
    with SafetensorsWriter(path, specs, delta_metadata(ticket or read_ticket(copy))) as w:
        for n, t in tensors.items():
            w.add(n, t)
    return path


def eval_tokenizer(vocab_size: int = 320):
    """The evaluation tests' tokenizer: word-list corpus, every chat turn ends with EOS."""
    return tiny_tokenizer(
        vocab_size, [*word_corpus(), "Question: Answer: \n"], chat_template=EOS_AFTER_EVERY_TURN
    )


def eval_model(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2):
    """The tiny Llama with tied embeddings and room for long completions."""
    return tiny_llama(
        tokenizer, seed=seed, layers=layers, hidden=hidden, tied=True, max_positions=512
    )


# ---------------------------------------------------------------- jobs on the TOFU world
def publish_job(tofu_world, root, **job):
    from mpu.server.config import JobConfig
    from mpu.server.job import Server

    _, models = tofu_world
    cfg = JobConfig(gate=False, **{"kappa": 0.1, "copies": 2, **job})
    server = Server.init(models / "target", models / "base", root / "server", cfg)
    copies = server.publish(root / "outbox", progress=False)
    return server, copies


def unlearn_copies(tofu_world, copies, root, **client):
    """GradAscent on each copy (a few real steps); returns the delta files."""
    from mpu.client.train_config import ClientTrainConfig
    from mpu.client.unlearn import load_client_data, unlearn_copy

    data, _ = tofu_world
    cfg = ClientTrainConfig(
        **{"method": "GradAscent", "epochs": 1, "batch_size": 4, "lr": 1e-3, **client}
    )
    client_data = load_client_data(data, "forget01", cfg)
    return [  # resolved per copy with the model's size: fp32 for this tiny model
        unlearn_copy(c, client_data, cfg, root / f"client-{c.name}", progress=False)[1]
        for c in copies
    ]
