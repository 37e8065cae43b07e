"""Noise calibration and zero-sum noise with α scaling (docs/protocol.md §2–3).

σ_l = κ · RMS(θ_r − θ_base) pooled over the tensors of block l; per tensor t of block l the
m draws z_j ~ N(0, σ_l² I) are centred and rescaled, ε⁰_k = sqrt(m/(m−1))·(z_k − z̄), so that
Σ_k ε⁰_k = 0 exactly and Cov(ε⁰_k) = σ_l² I; copy k gets ε_k = α_k·ε⁰_k. With harmonic weights
the first-order effect of the noise then cancels (Proposition 1, docs/protocol.md §9).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch


def default_alphas(m: int) -> list[float]:
    """The reference default α_k = 1 + (k−1)/(m−1): [1, 2] for m = 2, [1, 1.5, 2] for m = 3."""
    if m < 1:
        raise ValueError(f"need at least one copy, got m={m}")
    if m == 1:
        return [1.0]
    return [1.0 + k / (m - 1) for k in range(m)]


def validate_alphas(alphas: Sequence[float], m: int) -> list[float]:
    values = [float(a) for a in alphas]
    if len(values) != m:
        raise ValueError(f"{len(values)} noise scales α given for {m} copies")
    if not all(math.isfinite(a) and a > 0 for a in values):
        raise ValueError("every noise scale α_k must be a finite positive number")
    return values


def sigma_from_moments(sum_sq: float, numel: int, kappa: float) -> float:
    """κ · sqrt(Σ‖θ − θ_base‖² / Σ numel), the per-block (or per-tensor) noise scale."""
    if numel <= 0:
        raise ValueError("cannot calibrate noise over zero entries")
    return kappa * math.sqrt(sum_sq / numel)


def zero_sum_basis(m: int) -> torch.Tensor:
    """H ∈ ℝ^{m×(m−1)} with orthonormal columns orthogonal to 1, scaled by sqrt(m/(m−1)).

    ε⁰ = H·y with y_1..y_{m−1} ~ N(0, σ² I) i.i.d. is a zero-sum set with exactly the law of
    sqrt(m/(m−1))·(z − z̄) for m i.i.d. draws z (covariance σ²·m/(m−1)·(I − 11ᵀ/m)), from one
    draw fewer: for m = 2, ε⁰ = (y, −y). Columns: the Helmert contrasts.
    """
    if m < 2:
        raise ValueError(f"a zero-sum set needs m >= 2 copies, got {m}")
    h = torch.zeros(m, m - 1, dtype=torch.float64)
    for j in range(1, m):  # column j: (1, …, 1, −j, 0, …) / sqrt(j(j+1))
        h[:j, j - 1] = 1.0
        h[j, j - 1] = -float(j)
        h[:, j - 1] /= math.sqrt(j * (j + 1))
    return h * math.sqrt(m / (m - 1))


def copy_noise(
    draws: list[torch.Tensor], basis: torch.Tensor, k: int, alpha: float, x: torch.Tensor
) -> torch.Tensor:
    """θ + ε_k = x + α_k Σ_j H[k, j]·y_j as a new tensor, one pass per draw (x is not changed)."""
    out = torch.add(x, draws[0], alpha=alpha * float(basis[k, 0]))
    for j, y in enumerate(draws[1:], start=1):
        out.add_(y, alpha=alpha * float(basis[k, j]))
    return out


def zero_sum(draws: torch.Tensor) -> torch.Tensor:
    """ε⁰ from stacked draws z[0..m−1]: centred and rescaled; m = 1 returns z unchanged."""
    m = draws.shape[0]
    if m == 1:
        return draws.clone()
    return math.sqrt(m / (m - 1)) * (draws - draws.mean(dim=0, keepdim=True))


def copy_noises(
    shape: Sequence[int],
    sigma: float,
    alphas: Sequence[float],
    generator_of: Callable[[int], torch.Generator],
) -> torch.Tensor:
    """ε_1..ε_m (stacked, fp32) for one tensor; draw j uses `generator_of(j)` (j 0-based)."""
    m = len(alphas)
    draws = torch.stack(
        [
            torch.randn(tuple(shape), generator=generator_of(j), dtype=torch.float32)
            for j in range(m)
        ]
    )
    eps0 = zero_sum(draws.mul_(sigma))
    scale = torch.tensor(list(alphas), dtype=torch.float32).view(m, *([1] * len(shape)))
    return eps0.mul_(scale)
