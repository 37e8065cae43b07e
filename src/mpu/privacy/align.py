"""Undo a copy's reparameterization by alignment — what a curious client can do
(docs/threat-model.md, limit 2).

The residual stream, embeddings and norms are not transformed, so every secret map of a block
can be estimated from the copy and a reference with the same basis (the public base, or another
copy): the FFN permutation by a linear assignment of hidden units (rows of gate/up, columns of
down), each RoPE plane's rotation by a 2×2 orthogonal Procrustes fit on the K and Q rows of that
plane, the pass-through channels and the V/O map by d_h×d_h Procrustes fits. The estimated maps
(A, C per KV head and the permutation, the protocol's own parameterisation) are applied inverted
by the caller's `invert` function (the protocol's `transform`; passed in, so this package stays
independent of `mpu.protocol`), which maps the copy back into the reference's coordinates.

Pure maths on tensors: `{name: tensor}` dicts in, dicts out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from mpu.arch.base import Geometry, Layout, Role

Weights = dict[str, torch.Tensor]


class BlockMaps(NamedTuple):
    """Estimated maps of one block: A, C ([H_kv, d_h, d_h]) and the FFN permutation."""

    A: torch.Tensor
    C: torch.Tensor
    ffn_perm: torch.Tensor


# invert(tensor, role, geometry, maps) -> the tensor in reference coordinates (fp32)
Invert = Callable[[torch.Tensor, Role, Geometry, BlockMaps], torch.Tensor]


def procrustes(y: torch.Tensor, ref: torch.Tensor, *, proper: bool = False) -> torch.Tensor:
    """The orthogonal R minimising ‖R·y − ref‖_F (rows: dimensions, columns: samples).

    `proper`: a rotation (det +1), as RoPE planes need.
    """
    u, _, vh = torch.linalg.svd(ref.double() @ y.double().T)
    r = u @ vh
    if proper and torch.linalg.det(r) < 0:
        u = u.clone()
        u[:, -1] = -u[:, -1]
        r = u @ vh
    return r


def _by_role(layout: Layout, layer: int) -> dict[Role, list[str]]:
    out: dict[Role, list[str]] = {}
    for name in layout.blocks[layer]:
        out.setdefault(layout.role(name), []).append(name)
    return out


def _head_rows(w: torch.Tensor, heads: int, dh: int) -> torch.Tensor:
    """[H, d_h, in] view of a row-grouped projection (weight, or bias as in = 1)."""
    return w.reshape(heads, dh, -1)


def _qkv_parts(layout: Layout, roles: dict[Role, list[str]], w: Weights):
    """(Q rows [H_q, d_h, n], K rows [H_kv, d_h, n], V rows [H_kv, d_h, n], O cols [d, H_q, d_h])
    with every tensor of each role concatenated along the sample axis."""
    g = layout.geometry
    hq, hkv, dh = g.n_q_heads, g.n_kv_heads, g.head_dim
    qs, ks, vs, os_ = [], [], [], []
    for name in roles.get(Role.Q, []):
        qs.append(_head_rows(w[name].float(), hq, dh))
    for name in roles.get(Role.K, []):
        ks.append(_head_rows(w[name].float(), hkv, dh))
    for name in roles.get(Role.V, []):
        vs.append(_head_rows(w[name].float(), hkv, dh))
    for name in roles.get(Role.QKV, []):
        q, k, v = torch.split(w[name].float(), [hq * dh, hkv * dh, hkv * dh])
        qs.append(_head_rows(q, hq, dh))
        ks.append(_head_rows(k, hkv, dh))
        vs.append(_head_rows(v, hkv, dh))
    for name in roles.get(Role.QKV_PER_HEAD, []):
        t = w[name].float().reshape(hq, 3, dh, -1)
        qs.append(t[:, 0])
        ks.append(t[:, 1])
        vs.append(t[:, 2])
    for name in roles.get(Role.O, []):
        os_.append(w[name].float().reshape(-1, hq, dh))
    cat = lambda xs, dim: torch.cat(xs, dim=dim) if xs else None  # noqa: E731
    return cat(qs, 2), cat(ks, 2), cat(vs, 2), cat(os_, 0)


def _ffn_features(layout: Layout, roles: dict[Role, list[str]], w: Weights) -> torch.Tensor:
    """[d_ff, features]: each hidden unit's gate/up rows (and biases) and down column."""
    d_ff = layout.geometry.d_ff
    feats = []
    for name in roles.get(Role.FFN_IN, []):
        feats.append(w[name].float().reshape(d_ff, -1))
    for name in roles.get(Role.FFN_IN_FUSED, []):
        gate, up = torch.split(w[name].float(), [d_ff, d_ff])
        feats += [gate.reshape(d_ff, -1), up.reshape(d_ff, -1)]
    for name in roles.get(Role.FFN_OUT, []):
        feats.append(w[name].float().T.reshape(d_ff, -1))
    return torch.cat(feats, dim=1)


def match_units(copy: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """perm with copy[i] ≈ ref[perm[i]]: a linear assignment on squared distances (scipy)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(copy.double(), ref.double()).square().numpy()
    rows, cols = linear_sum_assignment(cost)
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm


def estimate_block(layout: Layout, layer: int, copy: Weights, ref: Weights) -> BlockMaps:
    """The maps T of one block that carry `ref`'s coordinates to `copy`'s, estimated from both."""
    g = layout.geometry
    roles = _by_role(layout, layer)
    perm = match_units(_ffn_features(layout, roles, copy), _ffn_features(layout, roles, ref))
    qc, kc, vc, oc = _qkv_parts(layout, roles, copy)
    qr, kr, vr, or_ = _qkv_parts(layout, roles, ref)
    hkv, dh, rot = g.n_kv_heads, g.head_dim, g.rotary_dim
    half = rot // 2
    group = g.group
    A = torch.zeros(hkv, dh, dh, dtype=torch.float64)
    C = torch.zeros(hkv, dh, dh, dtype=torch.float64)
    for j in range(hkv):
        # Q/K side: published rows are Aᵀ·x, so Aᵀ ≈ procrustes(ref → copy); samples: K and Q rows
        ys = [kc[j]] + [qc[i] for i in range(j * group, (j + 1) * group)]
        rs = [kr[j]] + [qr[i] for i in range(j * group, (j + 1) * group)]
        y, r = torch.cat(ys, dim=1), torch.cat(rs, dim=1)
        for p in range(half):
            idx = torch.tensor([p, p + half])
            at = procrustes(r[idx], y[idx], proper=True)  # Aᵀ on the plane
            A[j][idx.unsqueeze(1), idx] = at.T
        if rot < dh:
            rest = torch.arange(rot, dh)
            A[j][rest.unsqueeze(1), rest] = procrustes(r[rest], y[rest]).T
        # V/O side: V rows Cᵀ·v, O columns ·C
        yv = [vc[j]] + (
            [oc[:, i].T for i in range(j * group, (j + 1) * group)] if oc is not None else []
        )
        rv = [vr[j]] + (
            [or_[:, i].T for i in range(j * group, (j + 1) * group)] if or_ is not None else []
        )
        C[j] = procrustes(torch.cat(rv, dim=1), torch.cat(yv, dim=1)).T
    if g.qk_norm:  # quarter turns and signs only: snap to the signed permutation
        A = A.round()
    return BlockMaps(A, C, perm)


def align(
    layout: Layout, copy: Weights, ref: Weights, invert: Invert
) -> tuple[Weights, dict[int, BlockMaps]]:
    """`copy` mapped into `ref`'s coordinates (every block's maps estimated, then inverted)."""
    maps = {layer: estimate_block(layout, layer, copy, ref) for layer in layout.blocks}
    out: Weights = {}
    for name, t in copy.items():
        info = layout.tensors[name]
        if info.layer is None or not info.role.reparameterized:
            out[name] = t.float()
        else:
            out[name] = invert(t, info.role, layout.geometry, maps[info.layer])
    return out, maps
