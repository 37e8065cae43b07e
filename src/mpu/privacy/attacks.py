"""The attacks a curious party runs, measured against the truth (docs/threat-model.md).

Client's view (it holds the m copies of a round, and the public base):
- `reconstruct`: align each copy to a reference (the base, or copy 1 when the base is not used),
  then combine the aligned copies with the affine weights closest to the base — which are the
  harmonic weights, learned without knowing α — or, with no base, with the public default α.
- `invariant_distance`: per-head products W_Qᵀ W_K and W_O W_V are unchanged by every
  reparameterization: their distance to θ's needs no alignment at all.

Server's view (it holds the m updates):
- `token_recovery`: rows of the embedding / LM-head updates that move beyond weight decay name
  the tokens of the client's batches;
- membership on the update is scored by the leakage runner with `mpu.eval` (forget vs holdout
  loss change under θ + Δ̄).

Everything is a function of `{name: tensor}` dicts and a `Layout`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mpu.arch.base import Layout, Role
from mpu.privacy.align import Invert, Weights, align


def _sq(t: torch.Tensor) -> float:
    """Σ t² accumulated in float64 (the entries stay fp32: the model's own precision)."""
    return float(torch.sum(t.float().square(), dtype=torch.float64))


def norm(w: Weights, names: Sequence[str] | None = None) -> float:
    names = list(w) if names is None else names
    return math.sqrt(sum(_sq(w[n]) for n in names))


def distance(a: Weights, b: Weights, names: Sequence[str] | None = None) -> float:
    names = list(a) if names is None else names
    return math.sqrt(sum(_sq(a[n].float() - b[n].float()) for n in names))


def affine_weights(aligned: Sequence[Weights], anchor: Weights) -> list[float]:
    """w with Σw = 1 minimising ‖Σ_k w_k P̃_k − anchor‖: w = G⁻¹1 / 1ᵀG⁻¹1, G_jk = ⟨P̃_j − a, P̃_k − a⟩.

    With anchor = θ_base: Σ w_k P̃_k = θ + Σ w_k α_k ε⁰_k, and the noise term is cancelled by the
    harmonic weights, so the minimiser recovers them without knowing α (up to the τ·noise
    correlation, which vanishes with the tensor size).
    """
    m = len(aligned)
    gram = torch.zeros(m, m, dtype=torch.float64)
    for n in anchor:  # one tensor at a time: memory of m tensors, not m models
        diffs = [p[n].float() - anchor[n].float() for p in aligned]
        for j in range(m):
            for k in range(j, m):
                dot = torch.sum(diffs[j] * diffs[k], dtype=torch.float64)
                gram[j, k] += dot
                gram[k, j] = gram[j, k]
    ones = torch.ones(m, dtype=torch.float64)
    x = torch.linalg.lstsq(gram, ones.unsqueeze(1)).solution.squeeze(1)
    return (x / x.sum()).tolist()


def combine(aligned: Sequence[Weights], weights: Sequence[float]) -> Weights:
    return {
        n: sum(w * p[n].float() for w, p in zip(weights, aligned, strict=True)) for n in aligned[0]
    }


def harmonic(alphas: Sequence[float]) -> list[float]:
    """The paper's combining weights, w_k ∝ 1/α_k, as an attacker who assumes that design
    would compute them (the privacy domain does not import the protocol's own)."""
    inv = [1.0 / a for a in alphas]
    return [x / sum(inv) for x in inv]


def reconstruct(
    layout: Layout,
    copies: Sequence[Weights],
    invert: Invert,
    *,
    base: Weights | None,
    assumed_alphas: Sequence[float] | None = None,
) -> dict:
    """θ̂ from 1..m copies. With `base`: each copy aligned to the base, combined with the affine
    weights closest to the base. Without: copies aligned to copy 1 and combined with
    `assumed_alphas`' harmonic weights (the public default) — θ̂ is then in copy 1's coordinates.
    Returns {"one": θ̂ from copy 1, "all": θ̂ from every copy, "weights", "aligned"}."""
    ref = base if base is not None else copies[0]
    aligned = [align(layout, c, ref, invert)[0] if (base is not None or i) else {n: t.float() for n, t in c.items()}
               for i, c in enumerate(copies)]  # fmt: skip
    if len(aligned) == 1:
        weights = [1.0]
    elif base is not None:
        weights = affine_weights(aligned, base)
    else:
        weights = harmonic(
            assumed_alphas or [1.0 + k / (len(aligned) - 1) for k in range(len(aligned))]
        )
    return {
        "one": aligned[0],
        "all": combine(aligned, weights),
        "weights": weights,
        "aligned": aligned,
    }


def head_invariants(layout: Layout, w: Weights, probes: int = 64) -> dict[str, torch.Tensor]:
    """Per block and query head, on fixed random probes X: (W_Q X)ᵀ(W_K X) and W_O (W_V X) —
    unchanged by any T (Aᵀ A = I, C Cᵀ = I) — and the FFN's Gram (F Y)ᵀ(F Y) over its hidden
    units F (unchanged by their permutation). The probes keep this cheap on large models."""
    from mpu.privacy.align import _by_role, _ffn_features, _qkv_parts

    g = layout.geometry
    d = g.hidden
    x = torch.randn(d, probes, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = {}
    for layer in layout.blocks:
        roles = _by_role(layout, layer)
        q, k, v, o = _qkv_parts(layout, roles, w)
        for i in range(g.n_q_heads):
            j = i // g.group
            out[f"{layer}.qk{i}"] = (q[i][:, :d].double() @ x).T @ (k[j][:, :d].double() @ x)
            if o is not None:
                out[f"{layer}.ov{i}"] = o[:, i].double() @ (v[j][:, :d].double() @ x)
        f = _ffn_features(layout, roles, w).double()
        y = torch.randn(
            f.shape[1], probes, generator=torch.Generator().manual_seed(1), dtype=torch.float64
        )
        fy = f @ y
        out[f"{layer}.ffn_gram"] = fy.T @ fy
    return out


def invariant_distance(layout: Layout, a: Weights, b: Weights) -> float:
    """‖inv(a) − inv(b)‖ / ‖inv(b)‖ over every per-head invariant."""
    ia, ib = head_invariants(layout, a), head_invariants(layout, b)
    num = sum(float((ia[n] - ib[n]).square().sum()) for n in ib)
    den = sum(float(ib[n].square().sum()) for n in ib)
    return math.sqrt(num / den)


def embedding_rows_moved(
    update: torch.Tensor, weights: torch.Tensor | None, *, decay_tol: float = 1e-3
) -> torch.Tensor:
    """Per token (row): how far its update moves beyond weight decay — the row's update with its
    component along the row itself removed (decoupled weight decay moves every row along itself),
    relative to the largest such residual. Untouched rows score ~0."""
    u = update.double()
    if weights is not None:
        w = weights.double()
        coef = (u * w).sum(1, keepdim=True) / w.square().sum(1, keepdim=True).clamp_min(1e-30)
        u = u - coef * w
    scores = u.norm(dim=1)
    return scores / scores.max().clamp_min(1e-30)


def token_recovery(
    update: torch.Tensor,
    weights: torch.Tensor | None,
    true_tokens: set[int],
    *,
    threshold: float = 1e-3,
) -> dict:
    """Precision / recall of "tokens whose row moved" against the true forget-set tokens, at the
    threshold and at k = |true tokens| (the top-k rows), and the ranking's AUC."""
    from sklearn.metrics import roc_auc_score

    scores = embedding_rows_moved(update, weights)
    vocab = scores.numel()
    labels = torch.zeros(vocab)
    labels[list(true_tokens)] = 1
    flagged = set((scores > threshold).nonzero().flatten().tolist())
    k = len(true_tokens)
    top = set(torch.topk(scores, k).indices.tolist()) if k else set()
    hit = lambda s: len(s & true_tokens)  # noqa: E731
    uniform = bool((scores == scores[0]).all()) if vocab else True
    if uniform:  # no row moved (embeddings frozen): the server can only guess
        chance = k / vocab if vocab else 0.0
        return {"vocab": vocab, "true_tokens": k, "flagged": 0, "precision": 0.0, "recall": 0.0,
                "precision_at_k": chance, "recall_at_k": chance, "chance_at_k": chance,
                "auc": 0.5, "informative": False}  # fmt: skip
    return {
        "vocab": vocab,
        "true_tokens": k,
        "flagged": len(flagged),
        "precision": hit(flagged) / len(flagged) if flagged else 0.0,
        "recall": hit(flagged) / k if k else 0.0,
        "precision_at_k": hit(top) / k if k else 0.0,
        "recall_at_k": hit(top) / k if k else 0.0,
        "chance_at_k": k / vocab if vocab else 0.0,
        "auc": 0.5 if k in (0, vocab) else float(roc_auc_score(labels.numpy(), scores.numpy())),
        "informative": True,
    }


def embedding_names(layout: Layout) -> list[str]:
    """The token-indexed tensors of a layout present in it, the input embedding first: its rows
    move only for tokens the client's batches contain, while every LM-head row gets a softmax
    gradient (and is the same tensor when the embeddings are tied)."""
    spec = layout.spec
    wanted = set(spec.tied_alias) | set(spec.stored_names.values())
    found = [n for n, info in layout.tensors.items() if info.role is Role.OUTSIDE and n in wanted]
    return sorted(found, key=lambda n: n == spec.output_embedding)
