"""The function-preservation gate (docs/protocol.md §4.3): T(θ) must compute the same logits as θ.

Run on the real model before round 1 (κ = 0, fp32) and per adapter in CI on tiny models. A
failure means an adapter row is wrong for this checkpoint, and publishing would ship a
broken model to the client.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    return random_token_ids(vocab_size, length)


def random_token_ids(vocab_size: int, length: int = 32) -> torch.Tensor:
    """2 × `length` fixed pseudo-random ids: for function preservation any tokens serve (every
    map acts on every position alike), and no tokenizer has to be loaded."""
    return torch.randint(0, vocab_size, (2, length), generator=torch.Generator().manual_seed(0))


def gate_depth(config, blocks: int) -> int:
    """How many leading blocks the gate runs: `blocks` (0: all), raised so that every kind of
    layer the config names (`layer_types`: sliding / full attention, …) is among them."""
    total = config.num_hidden_layers
    if blocks <= 0:
        return total
    depth = blocks
    kinds = getattr(config, "layer_types", None) or []
    first: dict[str, int] = {}
    for i, kind in enumerate(kinds):
        first.setdefault(kind, i)
    if first:
        depth = max(depth, max(first.values()) + 1)
    return min(total, depth)


def load_leading_blocks(model_dir: str | Path, config, depth: int):
    """θ's first `depth` blocks with its embedding, final norm and head, in fp32: a model that
    runs like θ's first layers (the other blocks' weights are never read). `config` is θ's, as
    loaded by AutoConfig; a cut-down copy of it is used, the caller's is left as it was."""
    import copy

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    config = copy.deepcopy(config)
    if depth < config.num_hidden_layers:
        config.num_hidden_layers = depth
        if getattr(config, "layer_types", None):
            config.layer_types = list(config.layer_types[:depth])
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unread blocks are reported as unexpected keys
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(model_dir), config=config, dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(verbosity)


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


@dataclass(frozen=True)
class GateResult:
    """What the gate checked, for the log and the user: blocks run, tokens, the error found."""

    blocks: int
    of_blocks: int
    sequences: int
    tokens: int
    error: float

    def describe(self) -> str:
        scope = (
            f"all {self.of_blocks} blocks"
            if self.blocks == self.of_blocks
            else f"blocks 1–{self.blocks} of {self.of_blocks} (every block uses the same maps)"
        )
        return (
            f"T(θ) computes θ's logits through {scope}, the embedding and the head on "
            f"{self.sequences} × {self.tokens} tokens: max relative error {self.error:.2e} "
            f"(≤ {GATE_TOLERANCE:g})"
        )


def run_gate(theta, layout: Layout, cfg, config) -> GateResult:
    """Load θ's first `cfg.gate_blocks` blocks (with embedding and head), draw a throwaway T in
    the publication's fp32 arithmetic, compare the logits on 2 × 32 tokens (a wrong adapter
    row changes them at the first token); raise when the error exceeds GATE_TOLERANCE.

    Why not the whole model: every block is mapped by the same adapter rows, so a wrong row
    shows in the first block as in the last, and the gate's cost stays a few blocks' worth
    whatever the depth (an 8B model's full fp32 forward would need 32 GB). `config` is θ's
    transformers config, as the layout was classified against (it is not read again)."""
    import secrets

    from mpu.errors import CheckpointError
    from mpu.protocol.reparam import sample_block_transform

    total = layout.geometry.n_layers
    depth = gate_depth(config, cfg.gate_blocks)
    model = load_leading_blocks(theta.path, config, depth)
    gen = torch.Generator().manual_seed(secrets.randbits(62))
    transforms = {
        layer: sample_block_transform(
            layout.geometry, gen, angles=cfg.angles, vo_map=cfg.vo_map
        ).to(torch.float32)
        for layer in sorted(layout.blocks)[:depth]
    }
    ids = random_token_ids(model.config.vocab_size, length=32)
    err = preservation_error(model, layout, transforms, ids)
    del model
    if not err <= GATE_TOLERANCE:
        raise CheckpointError(
            f"{theta.path}: the {layout.spec.family} reparameterization changes the logits by "
            f"{err:.2e} (relative, > {GATE_TOLERANCE}): refusing to publish copies of this model"
        )
    return GateResult(depth, total, ids.shape[0], ids.shape[1], err)
