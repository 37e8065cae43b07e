"""Harmonic aggregation and the server step (docs/protocol.md §7, Proposition 1).

w_k = α_k⁻¹ / Σ_j α_j⁻¹ are the only weights with Σ w_k = 1 that cancel the first-order term
Σ_k w_k J ε_k for every J and every zero-sum noise. Accumulation is streaming in fp32
(S0 += α⁻¹, S1 += α⁻¹ Δ_k), one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def harmonic_weights(alphas: Sequence[float]) -> list[float]:
    inv = [1.0 / float(a) for a in alphas]
    total = sum(inv)
    return [w / total for w in inv]


class HarmonicAccumulator:
    """S1/S0 over the copies of one tensor; `mean()` is Δ̄ = Σ_k w_k Δ_k.

    Memory is the requirement here (issue 3: peak ≤ 1.5× model bytes while the embedding
    matrix alone is a fifth of a small model): with `owned=True` the first fp32 update becomes
    S1 in place, so aggregating m updates holds two tensors (S1 and the one being read), not
    three.
    """

    def __init__(self, like: torch.Tensor | None = None):
        self.s0 = 0.0
        self.s1: torch.Tensor | None = None
        self.count = 0
        self._shape = None if like is None else like.shape

    def add(self, delta: torch.Tensor, alpha: float, *, owned: bool = False) -> None:
        """S0 += 1/α, S1 += Δ/α. `owned`: the caller gives `delta` away (it may be overwritten)."""
        if self._shape is not None and delta.shape != self._shape:
            raise ValueError(f"update shape {tuple(delta.shape)} != {tuple(self._shape)}")
        self._shape = delta.shape
        self.s0 += 1.0 / alpha
        if self.s1 is None:
            if owned and delta.dtype == torch.float32:
                self.s1 = delta.mul_(1.0 / alpha)
            else:
                self.s1 = delta.to(torch.float32).mul(1.0 / alpha)
        else:
            self.s1.add_(delta.to(torch.float32), alpha=1.0 / alpha)
        self.count += 1

    def mean(self) -> torch.Tensor:
        """Δ̄ = S1/S0, computed in place (the accumulator is spent afterwards)."""
        if self.s1 is None:
            raise ValueError("no update accumulated")
        return self.s1.div_(self.s0)


def server_step(theta: torch.Tensor, mean_delta: torch.Tensor, eta: float) -> torch.Tensor:
    """θ_{r+1} = θ_r + η Δ̄_r in fp32; overwrites `mean_delta` to keep one buffer per tensor."""
    return mean_delta.mul_(eta).add_(theta.to(torch.float32))
