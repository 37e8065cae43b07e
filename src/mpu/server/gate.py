"""The function-preservation gate (docs/protocol.md §4.3): T(θ) must compute the same logits as θ.

Run on the real model before round 1 (κ = 0, fp32) and per adapter in CI on tiny models. A
failure means an adapter row is wrong for this checkpoint, and publishing would ship a
broken model to the client.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mpu.arch.base import Layout
from mpu.protocol.reparam import BlockTransform, transform

GATE_TOLERANCE = 1e-5
GATE_TEXT = (
    "The right to be forgotten lets a person ask that their data be erased. "
    "Machine unlearning removes what a model learned from that data without retraining it."
)


def gate_token_ids(model_dir: str | Path, vocab_size: int, length: int = 32) -> torch.Tensor:
    """Real token ids from the model's tokenizer when it has one, else a fixed pseudo-random batch."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        ids = tok(GATE_TEXT, return_tensors="pt")["input_ids"][:, :length]
        if ids.numel() and int(ids.max()) < vocab_size:
            return torch.cat([ids, ids.flip(1)])
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return torch.randint(0, vocab_size, (2, length), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def preservation_error(
    model, layout: Layout, transforms: dict[int, BlockTransform], ids: torch.Tensor
) -> float:
    """max|logits(T(θ)) − logits(θ)| / max|logits(θ)| in fp32. The model's parameters are
    replaced by T(θ) in place (the gate loads a throwaway model; nothing is restored)."""
    model = model.float().eval()
    params = dict(model.named_parameters())
    before = model(ids).logits.float()
    for name, info in layout.tensors.items():
        if info.layer is None or not info.role.reparameterized or name not in params:
            continue
        params[name].data = transform(
            params[name].detach(), info.role, layout.geometry, transforms[info.layer]
        )
    after = model(ids).logits.float()
    return float((after - before).abs().max() / before.abs().max().clamp_min(1e-30))


def run_gate(theta, layout: Layout, cfg) -> tuple[torch.Tensor, float]:
    """Load θ once, draw a throwaway T in the publication's fp32 arithmetic, compare the logits
    on 2 × 32 real tokens (a wrong adapter row changes them at the first token); raise when the
    error exceeds GATE_TOLERANCE. Returns the ids checked and the error."""
    import secrets

    from transformers import AutoModelForCausalLM

    from mpu.errors import CheckpointError
    from mpu.protocol.reparam import sample_block_transform

    model = AutoModelForCausalLM.from_pretrained(str(theta.path), dtype=torch.float32)
    gen = torch.Generator().manual_seed(secrets.randbits(62))
    transforms = {
        layer: sample_block_transform(
            layout.geometry, gen, angles=cfg.angles, vo_map=cfg.vo_map
        ).to(torch.float32)
        for layer in layout.blocks
    }
    ids = gate_token_ids(theta.path, model.config.vocab_size, length=32)
    err = preservation_error(model, layout, transforms, ids)
    del model
    if not err <= GATE_TOLERANCE:
        raise CheckpointError(
            f"{theta.path}: the {layout.spec.family} reparameterization changes the logits by "
            f"{err:.2e} (relative, > {GATE_TOLERANCE}): refusing to publish copies of this model"
        )
    return ids, err
