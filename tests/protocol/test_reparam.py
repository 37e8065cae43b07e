"""T is orthogonal, exactly invertible, RoPE-commuting, and q/k-norm compatible (docs/protocol.md §4)."""

import pytest
import torch

from mpu.arch.base import Geometry, Role
from mpu.protocol.reparam import sample_block_transform, transform

G = Geometry(
    n_layers=1,
    hidden=64,
    n_q_heads=8,
    n_kv_heads=2,
    head_dim=16,
    rotary_dim=12,
    d_ff=40,
    qk_norm=False,
)
SHAPES = {
    Role.Q: (128, 64),
    Role.K: (32, 64),
    Role.V: (32, 64),
    Role.O: (64, 128),
    Role.FFN_IN: (40, 64),
    Role.FFN_OUT: (64, 40),
    Role.QKV: (192, 64),
    Role.FFN_IN_FUSED: (80, 64),
}


@pytest.mark.parametrize("angles", ["continuous", "quarter_turn"])
@pytest.mark.parametrize("role", list(SHAPES))
def test_inverse_recovers_input(role, angles):
    bt = sample_block_transform(G, torch.Generator().manual_seed(3), angles=angles)
    x = torch.randn(SHAPES[role])
    y = transform(x, role, G, bt)
    assert not torch.allclose(y, x)
    back = transform(y, role, G, bt, inverse=True)
    assert float((back - x).abs().max() / x.abs().max()) <= 1e-6


@pytest.mark.parametrize("angles", ["continuous", "quarter_turn"])
def test_maps_are_orthogonal_and_commute_with_rope(angles):
    bt = sample_block_transform(G, torch.Generator().manual_seed(5), angles=angles)
    eye = torch.eye(G.head_dim, dtype=torch.float64)
    for A in list(bt.A) + list(bt.C):
        assert torch.allclose(A.T @ A, eye, atol=1e-12)
    half = G.rotary_dim // 2
    for theta in (0.3, 1.7):
        R = eye.clone()  # RoPE rotation at one position, rotate_half layout
        for p in range(half):
            c, s = (
                torch.cos(torch.tensor(theta * (p + 1))),
                torch.sin(torch.tensor(theta * (p + 1))),
            )
            R[p, p], R[p, p + half], R[p + half, p], R[p + half, p + half] = c, -s, s, c
        for A in bt.A:
            assert torch.allclose(A @ R, R @ A, atol=1e-12)


def test_qk_norm_maps_are_signed_permutations_shared_across_heads():
    g = Geometry(1, 64, 4, 2, 16, 16, 40, qk_norm=True)
    bt = sample_block_transform(g, torch.Generator().manual_seed(0), angles="continuous")
    patterns = bt.A * bt.A
    assert torch.equal(patterns[0], patterns[1])  # one turn type per plane for all heads
    assert set(bt.A.unique().tolist()) <= {-1.0, 0.0, 1.0}
    gamma = torch.randn(16)
    out = transform(gamma, Role.Q_NORM, g, bt)
    for A in bt.A:  # Aᵀ diag(γ) A = diag(γ')
        assert torch.allclose(
            A.T @ torch.diag(gamma.double()) @ A, torch.diag(out.double()), atol=1e-12
        )
