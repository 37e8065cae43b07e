"""Issue 25, must-show 1: extrapolation along a noise line removes the second-order bias that
harmonic weights leave (docs/protocol.md §9), on a client whose Hessian we know exactly.

The client is three gradient steps of logistic regression from the copy it is given, in float64:
Δ(w) = w_3 − w_0 is smooth, its derivatives are what autograd says, and the server's error is
Σ_k w_k Δ(θ + ε_k) − Δ(θ). The expectations are Monte-Carlo means over antithetic draws (y and
−y), so every odd order cancels in the mean and what remains is the even-order bias.
"""

import pytest
import torch

from mpu.protocol.aggregate import aggregation_weights, extrapolation_weights
from mpu.protocol.noise import (
    copy_noise,
    default_alphas,
    extrapolation_alphas,
    line_nodes,
    noise_basis,
)

D, N_DATA, STEPS, LR = 6, 40, 3, 0.8
DRAWS = 4000  # antithetic pairs: 2 × 2000


def _problem():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(N_DATA, D, generator=gen, dtype=torch.float64)
    labels = (torch.rand(N_DATA, generator=gen, dtype=torch.float64) < 0.5).double()
    theta = 0.5 * torch.randn(D, generator=gen, dtype=torch.float64)
    return x, labels, theta


X, Y, THETA = _problem()


def client(w: torch.Tensor) -> torch.Tensor:
    """Δ(w) for a batch of starting points w (B × D): three full-batch gradient steps."""
    start = w
    for _ in range(STEPS):
        grad = (torch.sigmoid(w @ X.T) - Y) @ X / N_DATA
        w = w - LR * grad
    return w - start


def _draws(sigma: float) -> torch.Tensor:
    y = torch.randn(DRAWS // 2, D, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    return sigma * torch.cat([y, -y])


def _scheme(name: str, m: int, lines: int = 1) -> tuple[torch.Tensor, list[float], list[float]]:
    """(basis, α, weights) of a scheme: the paper's harmonic on zero-sum noise, or ours."""
    if name == "harmonic":
        alphas = default_alphas(m)
        return noise_basis(m, "zero_sum"), alphas, aggregation_weights("harmonic", alphas)
    alphas = extrapolation_alphas(m, lines)
    nodes = line_nodes(alphas, lines)
    weights = aggregation_weights("extrapolate", alphas, nodes, lines)
    return noise_basis(m, "line", lines), alphas, weights


def errors(name: str, m: int, sigma: float, lines: int = 1) -> torch.Tensor:
    """Per draw, the aggregate's error Σ_k w_k Δ(θ + ε_k) − Δ(θ) (DRAWS × D)."""
    basis, alphas, weights = _scheme(name, m, lines)
    y = _draws(sigma)
    g = torch.Generator().manual_seed(13)  # zero-sum with m > 2: further independent draws
    extra = [sigma * torch.randn(y.shape, generator=g, dtype=torch.float64)
             for _ in range(basis.shape[1] - 1)]  # fmt: skip
    draws = [y, *extra]
    theta = THETA.expand(DRAWS, D)
    total = torch.zeros(DRAWS, D, dtype=torch.float64)
    for k in range(m):
        total += weights[k] * client(copy_noise(draws, basis, k, alphas[k], theta))
    return total - client(THETA.unsqueeze(0))


def predicted_harmonic_bias(sigma: float, alphas: list[float]) -> torch.Tensor:
    """½·ρ(α)·σ²·Σ_j ∂²Δ/∂w_j² with ρ = Σα/Σα⁻¹ (docs/protocol.md §9), Hessians by autograd."""
    rho = sum(alphas) / sum(1 / a for a in alphas)
    trace = torch.stack([
        torch.autograd.functional.hessian(lambda w, i=i: client(w.unsqueeze(0))[0, i], THETA).trace()
        for i in range(D)
    ])  # fmt: skip
    return 0.5 * rho * sigma**2 * trace


def test_the_line_designs_weights_reproduce_polynomials_up_to_degree_m_minus_1():
    for m in range(1, 7):
        nodes = line_nodes(extrapolation_alphas(m))
        w = extrapolation_weights(nodes)
        for degree in range(m):
            want = 1.0 if degree == 0 else 0.0
            assert sum(wk * t**degree for wk, t in zip(w, nodes, strict=True)) == pytest.approx(
                want, abs=1e-12
            )
    # m = 2 on the paper's zero-sum nodes (1, −2) is the harmonic rule itself
    assert extrapolation_weights([1.0, -2.0]) == pytest.approx([2 / 3, 1 / 3])


def test_harmonic_bias_is_the_predicted_second_order_term_and_quarters_with_sigma():
    sigma = 0.05
    bias = errors("harmonic", 2, sigma).mean(0)
    want = predicted_harmonic_bias(sigma, default_alphas(2))
    # MC error of the mean of H[y, y] (≈ 2 % at 2000 pairs) plus the σ⁴ term (≈ σ² ≈ 0.3 %)
    assert torch.linalg.vector_norm(bias - want) <= 0.06 * torch.linalg.vector_norm(want)
    half = errors("harmonic", 2, sigma / 2).mean(0)
    ratio = torch.linalg.vector_norm(bias) / torch.linalg.vector_norm(half)
    assert ratio == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("m", [3, 4])
def test_extrapolation_bias_is_over_100x_below_harmonics_and_falls_as_sigma_to_the_fourth(m):
    sigma = 0.05
    harmonic = torch.linalg.vector_norm(errors("harmonic", 2, sigma).mean(0))
    ours = torch.linalg.vector_norm(errors("extrapolate", m, sigma).mean(0))
    assert ours * 100 <= harmonic
    # odd orders cancel in the antithetic mean, the second is removed: the bias is O(σ⁴)
    half = torch.linalg.vector_norm(errors("extrapolate", m, sigma / 2).mean(0))
    assert float(ours / half) == pytest.approx(16.0, rel=0.15)


@pytest.mark.parametrize(("name", "m", "order"), [("harmonic", 2, 2), ("extrapolate", 3, 3),
                                                  ("extrapolate", 4, 4)])  # fmt: skip
def test_each_draws_error_shrinks_with_the_order_the_weights_leave(name, m, order):
    """Per draw (not only on average): harmonic leaves σ², three line nodes σ³, four σ⁴."""
    sigma = 0.05
    rms = errors(name, m, sigma).square().mean().sqrt()
    half = errors(name, m, sigma / 2).square().mean().sqrt()
    assert float(rms / half) == pytest.approx(2.0**order, rel=0.12)


def test_a_single_noisy_copy_keeps_a_first_order_error_that_the_copies_cancel():
    sigma = 0.05
    one = errors("extrapolate", 1, sigma).square().mean().sqrt()
    three = errors("extrapolate", 3, sigma).square().mean().sqrt()
    assert three * 100 <= one


def test_two_lines_halve_what_one_line_cannot_cancel_and_keep_its_bias():
    """copies=4 lines=2: two antithetic pairs on independent directions, weights ¼. Each pair
    cancels the odd orders and keeps ½σ²·tr H (ρ = 1: half the paper's); averaging two
    independent pairs keeps that bias and halves the variance of the error around it."""
    basis, alphas, weights = _scheme("extrapolate", 4, lines=2)
    assert basis.tolist() == [[1, 0], [-1, 0], [0, 1], [0, -1]]
    assert (alphas, weights) == ([1.0] * 4, [0.25] * 4)
    sigma = 0.05
    one, two = errors("extrapolate", 2, sigma), errors("extrapolate", 4, sigma, lines=2)
    want = predicted_harmonic_bias(sigma, [1.0, 1.0])
    for e in (one, two):  # MC error of the mean (≈ 2 %) plus the σ⁴ term
        assert torch.linalg.vector_norm(e.mean(0) - want) <= 0.06 * torch.linalg.vector_norm(want)
    spread = [float((e - e.mean(0)).square().sum(1).mean()) for e in (one, two)]
    # the ratio of two MC variances over 2000 independent draws: ±2·√(2/2000)·√2 ≈ ±9 %
    assert spread[1] / spread[0] == pytest.approx(0.5, rel=0.12)
