"""Issue 3, must-show 3 (protocol level): harmonic weights cancel the first-order noise term
for any linear client J; uniform weights do not (Proposition 1, docs/protocol.md §9)."""

import zlib

import pytest
import torch

from mpu.arch.base import Geometry, Role
from mpu.protocol.aggregate import HarmonicAccumulator, harmonic_weights, server_step
from mpu.protocol.noise import copy_noises, default_alphas
from mpu.protocol.reparam import sample_block_transform, transform

G = Geometry(
    n_layers=1,
    hidden=32,
    n_q_heads=4,
    n_kv_heads=2,
    head_dim=8,
    rotary_dim=8,
    d_ff=24,
    qk_norm=False,
)
TENSORS = {
    "q": (Role.Q, (32, 32)),
    "v": (Role.V, (16, 32)),
    "o": (Role.O, (32, 32)),
    "up": (Role.FFN_IN, (24, 32)),
    "down": (Role.FFN_OUT, (32, 24)),
    "norm": (Role.BLOCK_OTHER, (32,)),
}


def _linear_client(shape, gen):
    """J x = D∘x + U(Vᵀx): a generic (non-equivariant) linear response to the noise."""
    n = 1
    for s in shape:
        n *= s
    D = torch.randn(n, generator=gen)
    U, V = torch.randn(n, 3, generator=gen), torch.randn(n, 3, generator=gen)
    return lambda x: (D * x.reshape(-1) + U @ (V.T @ x.reshape(-1))).reshape(shape)


def _run(m, weights_kind):
    gen = torch.Generator().manual_seed(m)
    alphas = default_alphas(m)
    transforms = [
        sample_block_transform(G, torch.Generator().manual_seed(100 + k)) for k in range(m)
    ]
    worst = 0.0
    bound = 0.0  # fp32 rounding: ~32 unit roundoffs of the largest term, relative to |Δ*|
    for name, (role, shape) in TENSORS.items():
        A = torch.randn(shape, generator=gen)  # the noise-free update Δ*
        J = _linear_client(shape, gen)
        eps = copy_noises(
            shape,
            0.02,
            alphas,
            lambda j, name=name: torch.Generator().manual_seed(zlib.crc32(f"{name}/{j}".encode())),
        )
        acc = HarmonicAccumulator(A)
        uniform = torch.zeros(shape)
        for k in range(m):
            published_update = transform(
                A + J(eps[k]), role, G, transforms[k]
            )  # Δ'_k in copy coordinates
            delta = transform(published_update, role, G, transforms[k], inverse=True)
            acc.add(delta, alphas[k])
            uniform += delta / m
            bound = max(bound, 32 * 2**-24 * float(delta.abs().max() / A.abs().max()))
        recovered = acc.mean() if weights_kind == "harmonic" else uniform
        worst = max(worst, float((recovered - A).abs().max() / A.abs().max()))
    return worst, bound


@pytest.mark.parametrize("m", [2, 3, 5])
def test_harmonic_weights_recover_the_noise_free_update(m):
    err, bound = _run(m, "harmonic")
    assert err <= bound < 1e-4


@pytest.mark.parametrize("m", [2, 3])
def test_uniform_weights_leave_a_first_order_residual(m):
    err, bound = _run(m, "uniform")
    assert err > 1e-3 > 10 * bound


def test_harmonic_weights_formula():
    w = harmonic_weights([1.0, 2.0])
    assert w == pytest.approx([2 / 3, 1 / 3])
    assert sum(harmonic_weights([1.0, 1.5, 2.0])) == pytest.approx(1.0)


def test_server_step_is_fp32():
    theta = torch.ones(3, dtype=torch.bfloat16)
    out = server_step(theta, torch.full((3,), 1e-4), 1.0)
    assert out.dtype == torch.float32 and torch.allclose(out, torch.full((3,), 1.0001))


def test_owned_accumulation_equals_copying_and_reuses_the_first_update():
    gen = torch.Generator().manual_seed(0)
    deltas = [torch.randn(5, 7, generator=gen) for _ in range(3)]
    alphas = [1.0, 1.5, 2.0]
    copied, owned = HarmonicAccumulator(), HarmonicAccumulator()
    first = deltas[0].clone()
    for k, d in enumerate(deltas):
        copied.add(d, alphas[k])
        owned.add(first if k == 0 else d.clone(), alphas[k], owned=True)
    mean = owned.mean()
    assert mean.data_ptr() == first.data_ptr()  # S1 lives in the first update's buffer
    expected = sum(w * d for w, d in zip(harmonic_weights(alphas), deltas, strict=True))
    torch.testing.assert_close(mean, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(copied.mean(), expected, rtol=1e-6, atol=1e-7)
    mismatched = HarmonicAccumulator()
    mismatched.add(torch.ones(2), 1.0)
    with pytest.raises(ValueError, match="shape"):
        mismatched.add(torch.ones(3), 1.0)
