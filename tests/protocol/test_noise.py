"""Issue 3, must-show 4: zero-sum noise, α scaling and σ calibration (docs/protocol.md §2–3)."""

import math

import pytest
import torch

from mpu.protocol.noise import (
    copy_noises,
    default_alphas,
    sigma_from_moments,
    validate_alphas,
    zero_sum,
)
from mpu.protocol.rng import PaperStreams, SecretStreams, new_master_key

SHAPE = (
    256,
    384,
)  # ~98k entries: the RMS of one copy is within ±1% of α_k·σ with overwhelming probability


def _noises(m, alphas, sigma=0.02, key=None):
    streams = SecretStreams(key or new_master_key())
    return copy_noises(
        SHAPE, sigma, alphas, lambda j: streams.noise(1, "model.layers.0.mlp.up_proj.weight", j)
    )


@pytest.mark.parametrize("m", [2, 3, 5])
def test_weighted_noise_sums_to_zero(m):
    alphas = default_alphas(m)
    eps = _noises(m, alphas)
    weighted = sum(eps[k] / alphas[k] for k in range(m))
    # fp32 round-off: a few ulps of the summands' magnitude
    assert weighted.abs().max() <= 8 * m * torch.finfo(torch.float32).eps * eps.abs().max()
    if len(set(alphas)) > 1:  # the plain sum does not cancel unless all α are equal
        assert sum(eps).abs().max() > 1e-3


@pytest.mark.parametrize("m", [2, 3])
def test_per_copy_rms_is_alpha_sigma(m):
    sigma = 0.02
    alphas = default_alphas(m)
    eps = _noises(m, alphas, sigma)
    for k in range(m):
        rms = float(eps[k].pow(2).mean().sqrt())
        assert rms == pytest.approx(alphas[k] * sigma, rel=0.05)


def test_cross_copy_covariance_is_negative():
    m, sigma = 3, 1.0
    eps0 = _noises(m, [1.0] * m, sigma)
    cov = float((eps0[0] * eps0[1]).mean())
    assert cov == pytest.approx(-(sigma**2) / (m - 1), abs=0.02)


def test_zero_sum_single_copy_is_uncentred():
    z = torch.randn(4, 5).unsqueeze(0)
    assert torch.equal(zero_sum(z), z)


def test_default_alphas_match_reference():
    assert default_alphas(2) == [1.0, 2.0]
    assert default_alphas(3) == [1.0, 1.5, 2.0]
    assert default_alphas(1) == [1.0]


@pytest.mark.parametrize("bad", [[1.0], [1.0, 0.0], [1.0, -2.0], [1.0, math.inf]])
def test_invalid_alphas_rejected(bad):
    with pytest.raises(ValueError):
        validate_alphas(bad, 2)


def test_sigma_is_kappa_times_rms():
    diff = torch.randn(1000, dtype=torch.float64) * 0.3
    sigma = sigma_from_moments(float(diff.pow(2).sum()), diff.numel(), 0.01)
    assert sigma == pytest.approx(0.01 * float(diff.pow(2).mean().sqrt()), rel=1e-12)


def test_streams_are_keyed_and_reproducible():
    key = new_master_key()
    a = torch.randn(8, generator=SecretStreams(key).noise(1, "t", 0))
    b = torch.randn(8, generator=SecretStreams(key).noise(1, "t", 0))
    c = torch.randn(8, generator=SecretStreams(new_master_key()).noise(1, "t", 0))
    d = torch.randn(8, generator=SecretStreams(key).noise(2, "t", 0))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)
    assert "key" in repr(SecretStreams(key)) and key.hex() not in repr(SecretStreams(key))
    # the reference's public seeds are reproducible by anyone (defect B2, kept only as an option)
    assert PaperStreams().seed(101001, "noise", "t", 0) == PaperStreams().seed(
        101001, "noise", "t", 0
    )
