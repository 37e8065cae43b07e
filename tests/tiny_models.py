"""Tiny random models of every supported family, saved as Hugging Face folders, for tests.

The base is a random init; the "fine-tuned" model is the base plus a small perturbation of
every tensor, so RMS(θ − θ_base) > 0 in every block as with a real fine-tune.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

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
    """Save (model, base) folders under `root`; norm gains randomised so q/k-norm maps matter."""
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
