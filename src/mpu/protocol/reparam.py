"""Function-preserving linear reparameterizations T of a decoder block and their inverses (docs/protocol.md §4).

Per KV head j: an orthogonal A_j on the query/key side that commutes with RoPE (2-D rotations
on each rotary plane (p, p + r/2) of HF's rotate_half layout, any orthogonal map on the
pass-through channels) and an orthogonal C_j on the value/output side; per block a random
permutation π_f of the FFN hidden units. Published tensors: Q/K rows A_jᵀ·, V rows C_jᵀ·,
O columns ·C_j, FFN input rows [π_f], output columns [:, π_f]. T is linear and orthogonal, so
the inverse on an update is the transpose map. Everything is computed in float64.

q/k-norm models (Qwen3, Gemma3) need A_jᵀ diag(γ) A_j diagonal for the shared gain γ: only
quarter-turn angles keep that, with the plane's turn type shared by all heads, and the gain is
then published permuted (docs/protocol.md §4.1). `angles="quarter_turn"` makes every map a signed
permutation, which AdamW and gradient clipping commute with exactly (F6/B11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mpu.arch.base import Geometry, Role

ANGLE_MODES = ("continuous", "quarter_turn")
VO_MAPS = ("haar", "same_as_qk")
# exact cos/sin of the quarter turns 0, π/2, π, 3π/2
_QCOS = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64)
_QSIN = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64)


@dataclass(frozen=True)
class BlockTransform:
    """T for one block of one copy: A, C per KV head ([H_kv, d_h, d_h], float64) and π_f."""

    A: torch.Tensor
    C: torch.Tensor
    ffn_perm: torch.Tensor

    @property
    def ffn_inverse(self) -> torch.Tensor:
        return torch.argsort(self.ffn_perm)

    def to(self, dtype: torch.dtype, device: torch.device | str | None = None) -> BlockTransform:
        """The same maps in `dtype` (fp32 for the hot path: one rounding per entry, far below
        the 1e-5 function-preservation bound) on `device`."""
        return BlockTransform(
            self.A.to(dtype=dtype, device=device),
            self.C.to(dtype=dtype, device=device),
            self.ffn_perm.to(device=device),
        )


def haar_orthogonal(n: int, gen: torch.Generator, batch: int | None = None) -> torch.Tensor:
    """Haar-distributed orthogonal matrices (QR of Gaussians with the sign fix); one batched QR."""
    shape = (n, n) if batch is None else (batch, n, n)
    q, r = torch.linalg.qr(torch.randn(*shape, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def signed_permutation(n: int, gen: torch.Generator) -> torch.Tensor:
    perm = torch.randperm(n, generator=gen)
    signs = torch.randint(0, 2, (n,), generator=gen).to(torch.float64).mul_(2).sub_(1)
    return torch.eye(n, dtype=torch.float64)[perm] * signs.unsqueeze(0)


def identity_transform(g: Geometry) -> BlockTransform:
    eye = torch.eye(g.head_dim, dtype=torch.float64).expand(g.n_kv_heads, -1, -1).clone()
    return BlockTransform(eye, eye.clone(), torch.arange(g.d_ff))


def _rope_commuting(g: Geometry, gen: torch.Generator, angles: str) -> torch.Tensor:
    """A_j for every KV head: rotations on rotary planes ⊕ a map on pass-through channels."""
    hkv, dh, r = g.n_kv_heads, g.head_dim, g.rotary_dim
    half = r // 2
    A = torch.zeros(hkv, dh, dh, dtype=torch.float64)
    if half:
        if g.qk_norm:
            # one turn type per plane for all heads (shared gains), a random sign per head
            turn_type = torch.randint(0, 2, (1, half), generator=gen)
            quarter = turn_type + 2 * torch.randint(0, 2, (hkv, half), generator=gen)
            cos, sin = _QCOS[quarter], _QSIN[quarter]
        elif angles == "quarter_turn":
            quarter = torch.randint(0, 4, (hkv, half), generator=gen)
            cos, sin = _QCOS[quarter], _QSIN[quarter]
        else:
            phi = 2 * math.pi * torch.rand(hkv, half, generator=gen, dtype=torch.float64)
            cos, sin = torch.cos(phi), torch.sin(phi)
        p = torch.arange(half)
        A[:, p, p] = cos
        A[:, p, p + half] = -sin
        A[:, p + half, p] = sin
        A[:, p + half, p + half] = cos
    n_pass = dh - r
    if n_pass:
        if g.qk_norm:  # must commute with diag(γ): random signs only
            signs = torch.randint(0, 2, (hkv, n_pass), generator=gen).to(torch.float64) * 2 - 1
            A[:, r:, r:] = torch.diag_embed(signs)
        elif angles == "quarter_turn":
            A[:, r:, r:] = torch.stack([signed_permutation(n_pass, gen) for _ in range(hkv)])
        else:
            A[:, r:, r:] = haar_orthogonal(n_pass, gen, batch=hkv)
    return A


def sample_block_transform(
    g: Geometry,
    gen: torch.Generator,
    *,
    angles: str = "continuous",
    vo_map: str = "haar",
) -> BlockTransform:
    """Draw T for one block from `gen` (RoPE-aware, q/k-norm restricted, GQA-consistent)."""
    if angles not in ANGLE_MODES:
        raise ValueError(f"angles must be one of {ANGLE_MODES}, not {angles!r}")
    if vo_map not in VO_MAPS:
        raise ValueError(f"vo_map must be one of {VO_MAPS}, not {vo_map!r}")

    def any_orthogonal() -> torch.Tensor:
        if angles == "quarter_turn":
            return torch.stack([signed_permutation(g.head_dim, gen) for _ in range(g.n_kv_heads)])
        return haar_orthogonal(g.head_dim, gen, batch=g.n_kv_heads)

    # no RoPE: any orthogonal map preserves q·k
    A = _rope_commuting(g, gen, angles) if g.rotary_dim else any_orthogonal()
    C = A.clone() if vo_map == "same_as_qk" else any_orthogonal()
    perm = torch.randperm(g.d_ff, generator=gen)
    return BlockTransform(A, C, perm)


def _rows(x: torch.Tensor, maps: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Per head h: rows Mᵀ·X_h (forward) or M·X_h (inverse); x is [H·d_h] or [H·d_h, in]."""
    heads, dh = maps.shape[0], maps.shape[1]
    v = x.reshape(heads, dh, -1)
    eq = "hij,hjr->hir" if inverse else "hji,hjr->hir"
    return torch.einsum(eq, maps, v).reshape(x.shape)


def _cols(x: torch.Tensor, maps: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Per head h: columns X_h·M (forward) or X_h·Mᵀ (inverse); x is [d, H·d_h]."""
    heads, dh = maps.shape[0], maps.shape[1]
    v = x.reshape(x.shape[0], heads, dh)
    eq = "dhk,hjk->dhj" if inverse else "dhj,hjk->dhk"
    return torch.einsum(eq, v, maps).reshape(x.shape)


def _gain(x: torch.Tensor, A: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Shared per-head norm gain: γ' = diag(Aᵀ diag(γ) A) = (A∘A)ᵀγ for signed permutations."""
    P = A[0] * A[0]
    return P @ x if inverse else P.T @ x


_PERMUTED = (Role.FFN_IN, Role.FFN_IN_FUSED, Role.FFN_OUT)


def _permute(
    y: torch.Tensor, role: Role, g: Geometry, bt: BlockTransform, inverse: bool
) -> torch.Tensor:
    idx = bt.ffn_inverse if inverse else bt.ffn_perm
    if role is Role.FFN_IN:
        return torch.index_select(y, 0, idx)
    if role is Role.FFN_OUT:
        return torch.index_select(y, 1, idx)
    gate, up = torch.split(y, [g.d_ff, g.d_ff], dim=0)
    return torch.cat([torch.index_select(gate, 0, idx), torch.index_select(up, 0, idx)])


def transform(
    x: torch.Tensor, role: Role, g: Geometry, bt: BlockTransform, *, inverse: bool = False
) -> torch.Tensor:
    """Apply T (or T⁻¹, which is also the map for updates) to one tensor of the block; fp32 out.

    Rotations are computed in the maps' dtype: float64 as sampled (the gate), fp32 after
    `BlockTransform.to(torch.float32)` (publication and aggregation: one fp32 rounding per
    entry, ~1e-7 relative, tested ≤ 1e-5 on the logits of every family). Permutations are
    exact in any dtype.
    """
    if role in _PERMUTED:
        return _permute(x.to(torch.float32), role, g, bt, inverse)
    if not role.reparameterized:
        return x.to(torch.float32)
    y = x.to(bt.A.dtype)
    q_maps = bt.A[g.kv_of_query_heads().to(bt.A.device)]
    dq, dkv = g.n_q_heads * g.head_dim, g.n_kv_heads * g.head_dim
    if role is Role.Q:
        y = _rows(y, q_maps, inverse)
    elif role is Role.K:
        y = _rows(y, bt.A, inverse)
    elif role is Role.V:
        y = _rows(y, bt.C, inverse)
    elif role is Role.O:
        y = _cols(y, bt.C[g.kv_of_query_heads().to(bt.C.device)], inverse)
    elif role is Role.QKV:
        q, k, v = torch.split(y, [dq, dkv, dkv], dim=0)
        y = torch.cat([_rows(q, q_maps, inverse), _rows(k, bt.A, inverse), _rows(v, bt.C, inverse)])
    elif role is Role.QKV_PER_HEAD:
        heads = y.reshape(g.n_q_heads, 3, g.head_dim, -1)
        parts = [
            _rows(heads[:, i].reshape(dq, -1), maps, inverse).reshape(g.n_q_heads, g.head_dim, -1)
            for i, maps in enumerate((q_maps, q_maps, bt.C[g.kv_of_query_heads().to(bt.C.device)]))
        ]
        y = torch.stack(parts, dim=1).reshape(x.shape)
    elif role in (Role.Q_NORM, Role.K_NORM):
        y = _gain(y, bt.A, inverse)
    else:  # pragma: no cover - every reparameterized role is handled above
        raise AssertionError(role)
    return y.to(torch.float32)
