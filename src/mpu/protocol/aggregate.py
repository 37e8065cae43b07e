"""Harmonic aggregation and the server step (MPU.md §7, Proposition 1).

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
    """S1/S0 over the copies of one tensor; `mean()` is Δ̄ = Σ_k w_k Δ_k."""

    def __init__(self, like: torch.Tensor):
        self.s0 = 0.0
        self.s1 = torch.zeros(like.shape, dtype=torch.float32)
        self.count = 0

    def add(self, delta: torch.Tensor, alpha: float) -> None:
        self.s0 += 1.0 / alpha
        self.s1.add_(delta.to(torch.float32), alpha=1.0 / alpha)
        self.count += 1

    def mean(self) -> torch.Tensor:
        """Δ̄ = S1/S0, computed in place (the accumulator is spent afterwards)."""
        if self.count == 0:
            raise ValueError("no update accumulated")
        return self.s1.div_(self.s0)


def server_step(theta: torch.Tensor, mean_delta: torch.Tensor, eta: float) -> torch.Tensor:
    """θ_{r+1} = θ_r + η Δ̄_r in fp32; overwrites `mean_delta` to keep one buffer per tensor."""
    return mean_delta.mul_(eta).add_(theta.to(torch.float32))
