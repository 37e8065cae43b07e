"""Noise calibration and the two noise designs (docs/protocol.md §2–3, §9).

σ_l = κ · RMS(θ_r − θ_base) pooled over the tensors of block l. Copy k gets
ε_k = α_k Σ_j B[k, j]·y_j with y_j ~ N(0, σ_l² I) i.i.d. and B the design's basis:

- **zero_sum** (the paper's): B = the scaled Helmert contrasts, m − 1 draws, Σ_k ε_k/α_k = 0
  exactly; harmonic weights cancel the first-order effect (Proposition 1);
- **line** (ours, for extrapolation): B = alternating signs (+1, −1, +1, …), one draw: every
  copy lies on one line through θ, at the signed node t_k = ±α_k along y. The update is then a
  smooth function of one scalar t, and Lagrange weights at t = 0 cancel every order below m.
  With L lines the copies are split into L groups of m/L, each group on a line of its own
  (independent draws y_1..y_L, B block-diagonal): each line is extrapolated alone and the lines
  are averaged, which divides by L the variance of whatever a line cannot cancel.
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


def extrapolation_alphas(m: int, lines: int = 1) -> list[float]:
    """The line design's default node sizes |t_k| = 1, 1, 2, 2, 3, … on each line: nodes ±1,
    ±2, … (the antithetic pairs cancel every odd order; m = 3 → t = (1, −1, 2), m = 4 →
    (1, −1, 2, −2); m = 4 on two lines → (1, −1 | 1, −1))."""
    if m < 1:
        raise ValueError(f"need at least one copy, got m={m}")
    per = copies_per_line(m, lines)
    return [float(1 + (k % per) // 2) for k in range(m)]


def copies_per_line(m: int, lines: int) -> int:
    """m / L: the copies of a line are k = j·(m/L) … (j+1)·(m/L) − 1 for line j."""
    if lines < 1 or m % lines:
        raise ValueError(f"{m} copies cannot be split evenly over {lines} noise lines")
    return m // lines


def line_of(k: int, m: int, lines: int) -> int:
    """The line copy k lies on."""
    return k // copies_per_line(m, lines)


def line_signs(m: int, lines: int = 1) -> list[float]:
    """The line design's signs: +1, −1, +1, … along each line (copy k sits at t_k = sign_k·α_k
    on its line)."""
    per = copies_per_line(m, lines)
    return [1.0 if (k % per) % 2 == 0 else -1.0 for k in range(m)]


def line_nodes(alphas: Sequence[float], lines: int = 1) -> list[float]:
    """t_k = sign_k·α_k, the copies' signed positions along their line's noise direction."""
    signs = line_signs(len(alphas), lines)
    return [s * float(a) for s, a in zip(signs, alphas, strict=True)]


def noise_basis(m: int, design: str, lines: int = 1) -> torch.Tensor:
    """B ∈ ℝ^{m×d} of the design (d draws per noised tensor); m = 1 is one uncentred draw.
    The line design has one column per line, copy k's sign in its line's column."""
    if m == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    if design == "zero_sum":
        return zero_sum_basis(m)
    if design == "line":
        basis = torch.zeros(m, lines, dtype=torch.float64)
        for k, sign in enumerate(line_signs(m, lines)):
            basis[k, line_of(k, m, lines)] = sign
        return basis
    raise ValueError(f"unknown noise design {design!r}: expected zero_sum or line")


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
    """θ + ε_k = x + α_k Σ_j H[k, j]·y_j as a new tensor, one pass per draw that copy k uses
    (x is not changed; a line copy uses only its own line's draw)."""
    used = [(y, float(basis[k, j])) for j, y in enumerate(draws) if float(basis[k, j]) != 0.0]
    out = torch.add(x, used[0][0], alpha=alpha * used[0][1])
    for y, b in used[1:]:
        out.add_(y, alpha=alpha * b)
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
