"""Aggregation weights and the server step (docs/protocol.md §7 and §9).

- harmonic (the paper's): w_k = α_k⁻¹ / Σ_j α_j⁻¹, the only weights with Σ w_k = 1 that cancel
  the first-order term Σ_k w_k J ε_k for every J and every zero-sum noise (Proposition 1);
- uniform: w_k = 1/m, the ablation;
- extrapolate (ours): copies on one noise line at nodes t_k, w_k = L_k(0), the Lagrange basis
  at t = 0. Σ_k w_k t_kⁿ = 0ⁿ for n < m, so every term of the update's Taylor series in t below
  order m cancels exactly — the second-order bias that harmonic weights leave included.

Accumulation is streaming in fp32 (S0 += w_k, S1 += w_k Δ_k; Δ̄ = S1/S0), one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpu.protocol.noise import copies_per_line

AGGREGATIONS = ("extrapolate", "harmonic", "uniform")
# Σ_k |w_k| bounds how much the copies' own errors (rounding, an optimizer that is not
# equivariant to the maps) are amplified; nodes that crowd together make it explode
MAX_AMPLIFICATION = 4.0


def harmonic_weights(alphas: Sequence[float]) -> list[float]:
    inv = [1.0 / float(a) for a in alphas]
    total = sum(inv)
    return [w / total for w in inv]


def extrapolation_weights(nodes: Sequence[float]) -> list[float]:
    """Lagrange basis at 0, L_k(0) = Π_{j≠k} t_j / (t_j − t_k), in float64.

    Σ_k L_k(0)·p(t_k) = p(0) for every polynomial p of degree < m: the noise-free update is
    recovered exactly up to the update's m-th derivative along the noise line."""
    t = [float(x) for x in nodes]
    if len(set(t)) != len(t) or 0.0 in t:
        raise ValueError(f"extrapolation needs distinct non-zero nodes, got {t}")
    out = []
    for k, tk in enumerate(t):
        w = 1.0
        for j, tj in enumerate(t):
            if j != k:
                w *= tj / (tj - tk)
        out.append(w)
    return out


def line_weights(nodes: Sequence[float], lines: int) -> list[float]:
    """Extrapolation over L independent lines of m/L consecutive copies each: every line's
    Lagrange weights at zero noise, divided by L (the lines' estimates are averaged)."""
    per = copies_per_line(len(nodes), lines)
    out: list[float] = []
    for j in range(lines):
        out += [w / lines for w in extrapolation_weights(nodes[j * per : (j + 1) * per])]
    return out


def aggregation_weights(
    scheme: str, alphas: Sequence[float], nodes=None, lines: int = 1
) -> list[float]:
    """w_k of copy k (Σ w_k = 1) for `scheme`; `nodes` (signed t_k) and `lines` only for
    extrapolate."""
    if scheme == "harmonic":
        return harmonic_weights(alphas)
    if scheme == "uniform":
        return [1.0 / len(alphas)] * len(alphas)
    if scheme == "extrapolate":
        return line_weights(nodes, lines)
    raise ValueError(f"unknown aggregation {scheme!r}: expected one of {AGGREGATIONS}")


def amplification(weights: Sequence[float]) -> float:
    """Σ_k |w_k|: 1 for positive weights, more when extrapolation subtracts copies."""
    return sum(abs(w) for w in weights)


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
        """S0 += 1/α, S1 += Δ/α (the harmonic weight). `owned`: the caller gives `delta` away."""
        self.add_weighted(delta, 1.0 / alpha, owned=owned)

    def add_weighted(self, delta: torch.Tensor, weight: float, *, owned: bool = False) -> None:
        """S0 += w, S1 += w·Δ for any weight (negative ones included: extrapolation).
        `owned`: the caller gives `delta` away (it may be overwritten)."""
        if self._shape is not None and delta.shape != self._shape:
            raise ValueError(f"update shape {tuple(delta.shape)} != {tuple(self._shape)}")
        self._shape = delta.shape
        self.s0 += weight
        if self.s1 is None:
            if owned and delta.dtype == torch.float32:
                self.s1 = delta.mul_(weight)
            else:
                self.s1 = delta.to(torch.float32).mul(weight)
        else:
            self.s1.add_(delta.to(torch.float32), alpha=weight)
        self.count += 1

    def mean(self) -> torch.Tensor:
        """Δ̄ = S1/S0, computed in place (the accumulator is spent afterwards)."""
        if self.s1 is None:
            raise ValueError("no update accumulated")
        return self.s1.div_(self.s0)


def server_step(theta: torch.Tensor, mean_delta: torch.Tensor, eta: float) -> torch.Tensor:
    """θ_{r+1} = θ_r + η Δ̄_r in fp32; overwrites `mean_delta` to keep one buffer per tensor."""
    return mean_delta.mul_(eta).add_(theta.to(torch.float32))
