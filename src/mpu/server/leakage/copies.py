"""The client's view of a round: how close θ̂ gets to θ from the copies it holds.

From one copy and from all m, aligned to the public base or copy to copy without it; the
weights it finds against the true noise-cancelling ones; the logit gap between θ̂ and θ; θ̂'s
benchmark numbers next to θ's; the alignment-free invariant distance; and, as yardsticks, what
the true secrets give (they undo a copy exactly; combined, they give the best any attacker can do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mpu.arch.base import Layout, Role
from mpu.io.checkpoint import Checkpoint
from mpu.privacy import attacks as A
from mpu.privacy.align import BlockMaps
from mpu.protocol.reparam import BlockTransform, transform
from mpu.server.job import Server
from mpu.server.leakage.models import model_with, tofu_numbers
from mpu.server.state import round_dir


def invert(t: torch.Tensor, role: Role, g, maps: BlockMaps) -> torch.Tensor:
    """The protocol's inverse map, for the attacks' estimated maps."""
    return transform(t, role, g, BlockTransform(maps.A, maps.C, maps.ffn_perm), inverse=True)


def load(ck: Checkpoint, names: list[str]) -> dict[str, torch.Tensor]:
    return {n: ck.read(n).to(torch.float32) for n in names}


def _rel(a, b, task: float, names=None) -> float:
    return A.distance(a, b, names) / task


def logit_gap(
    model_dir: Path, weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> float:
    """max |logits(weights) − logits(reference)| / max |logits(reference)| on real tokens."""
    from mpu.server.gate import gate_token_ids

    model = model_with(model_dir)
    ids = gate_token_ids(model_dir, model.config.vocab_size, length=32)
    params = dict(model.named_parameters())

    def logits(w):
        with torch.no_grad():
            for n, t in w.items():
                if n in params:
                    params[n].copy_(t)
            return model(ids).logits.float()

    ref = logits(reference)
    return float((logits(weights) - ref).abs().max() / ref.abs().max())


def combining_weights(cfg, alphas: list[float], ks: list[int]) -> list[float]:
    """Weights with Σ w = 1 that remove the noise of the copies `ks` exactly, given the
    secrets: the harmonic ones for the zero-sum design (all m copies), the two-or-more-point
    Lagrange weights at zero noise for the line design (any two copies of a line suffice; with
    several lines each line with two or more of `ks` is extrapolated alone and the lines are
    averaged, a lone copy of a line getting weight 0)."""
    from mpu.protocol.aggregate import extrapolation_weights, harmonic_weights
    from mpu.protocol.noise import line_nodes, line_of

    if cfg.noise_design != "line" or len(ks) < 2:
        return harmonic_weights([alphas[k] for k in ks])
    nodes, m = line_nodes(alphas, cfg.lines), len(alphas)
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(ks):
        groups.setdefault(line_of(k, m, cfg.lines), []).append(i)
    usable = [g for g in groups.values() if len(g) > 1]
    if not usable:  # one copy from each of several lines: nothing cancels
        return harmonic_weights([alphas[k] for k in ks])
    weights = [0.0] * len(ks)
    for g in usable:
        for i, w in zip(g, extrapolation_weights([nodes[ks[i]] for i in g]), strict=True):
            weights[i] = w / len(usable)
    return weights


def with_secrets(
    server: Server, round_: int, layout: Layout, copies: list[tuple[Checkpoint, int]], theta, task
) -> dict:
    """What the secrets themselves give, as yardsticks for the attacks:

    - `exact_with_secrets`: copy 1 undone with its true map, noise and residual removed,
      ‖· − θ‖ / ‖θ‖ — the sanity check that the audit reads the copies right (≈ 1e-7 in fp32);
    - `ideal_all_copies`: the true inverses combined with the weights that cancel the noise — the best
      any attacker can do with every copy of the round, relative to ‖θ − θ_base‖ (0 without a
      residual: the copies *determine* θ, only the maps hide it);
    - `residual_floor`: ‖ξ‖ / ‖θ − θ_base‖, the residual noise no combination can remove."""
    from mpu.protocol.noise import noise_basis
    from mpu.server.publish import TransformCache, copy_names, noised, sigma_key

    cfg = server.cfg
    streams = server.secret_streams()
    transforms = TransformCache(streams, round_, layout, cfg)
    alphas = server.state.alphas[str(round_)]
    sigmas = server.state.sigmas[str(round_)]
    m = len(alphas)
    basis = noise_basis(m, cfg.noise_design, cfg.lines)
    weights = combining_weights(cfg, alphas, [k for _, k in copies])
    exact = ideal = floor = 0.0
    rename, _ = copy_names(Checkpoint(round_dir(server.workdir, round_)), layout, cfg)
    source = server.publication_source(round_)  # a distilled emulator's middle is not θ's
    distilled = getattr(source, "distilled_names", frozenset())
    for name in theta:
        if rename[name] is None:  # an emulator copy lacks this block: nothing to undo
            continue
        target = (
            source.read(name).to(torch.float32) if name in distilled else theta[name]
        ).double()
        inverted = [
            transforms.apply(ck.read(rename[name]), name, k, inverse=True).double()
            for ck, k in copies
        ]
        combined = sum(w * y for w, y in zip(weights, inverted, strict=True))
        ideal += float((combined - target).square().sum())
        y = inverted[0]
        if noised(name, layout, cfg) and cfg.kappa > 0:
            noise_name = layout.tied.get(name, name)
            sigma = sigmas[sigma_key(name, layout, cfg)]
            k = copies[0][1]
            for j in range(basis.shape[1]):
                z = torch.randn(tuple(y.shape), generator=streams.noise(round_, noise_name, j))
                y = y - alphas[k] * float(basis[k, j]) * sigma * z.double()
            if cfg.residual > 0:
                xi = torch.randn(tuple(y.shape), generator=streams.residual(noise_name))
                xi = cfg.residual * sigma * xi.double()
                y = y - xi
                floor += float(xi.square().sum())
        exact += float((y - target).square().sum())
    return {
        "exact_with_secrets": math.sqrt(exact) / A.norm(theta),
        "ideal_all_copies": math.sqrt(ideal) / task,
        "residual_floor": math.sqrt(floor) / task,
    }


@dataclass
class RoundView:
    """What the audit reads of one published round: θ, the base, the copies as the client holds
    them, and the client's two reconstructions (aligned to the base; copy to copy without it)."""

    theta_dir: Path
    layout: Layout
    theta: dict
    base: dict
    copies: list[Path]
    published: list[dict]
    with_base: dict
    no_base: dict
    rename: dict = field(default_factory=dict)  # θ's name → the copies' (None: a block they lack)


def read_copy(ck: Checkpoint, rename: dict[str, str | None], base: dict) -> dict:
    """A copy's tensors in θ's names (fp32; `rename`: θ's name → the copy's). An emulator copy
    lacks some blocks: the client's best stand-in for them is the public base's, so every
    reconstruction uses those."""
    return {n: base[n].clone() if c is None else ck.read(c).to(torch.float32)
            for n, c in rename.items()}  # fmt: skip


def read_round(server: Server, round_: int, copies: list[Path]) -> RoundView:
    """Load the round and run the client's reconstructions once (both views share them)."""
    theta_ck = Checkpoint(round_dir(server.workdir, round_))
    layout = server.layout(theta_ck)
    names = theta_ck.names()
    base = load(Checkpoint(server.state.base_dir), [n for n in names if n not in layout.tied])
    for alias, canonical in layout.tied.items():
        base[alias] = base[canonical]
    from mpu.server.publish import copy_names

    rename, _ = copy_names(theta_ck, layout, server.cfg)
    published = [read_copy(Checkpoint(c), rename, base) for c in copies]
    return RoundView(
        theta_ck.path, layout, load(theta_ck, names), base, list(copies), published,
        with_base=A.reconstruct(layout, published, invert, base=base),
        no_base=A.reconstruct(layout, published, invert, base=None), rename=rename,
    )  # fmt: skip


def client_view(
    server: Server,
    round_: int,
    view: RoundView,
    *,
    data=None,
    forget_split: str = "forget10",
    limit: int = 50,
) -> dict:
    """Reconstruction errors of θ̂ from the copies, with and without the base (see module doc)."""
    layout, theta, base, copies = view.layout, view.theta, view.base, view.copies
    with_base, no_base, published = view.with_base, view.no_base, view.published
    blocks = [n for n in theta if layout.block_of(n) is not None]
    task = A.distance(theta, base)
    records = {r.folder: r for r in server.state.copy_records(round_)}
    alphas = server.state.alphas[str(round_)]
    combos = [
        _rel(A.combine(with_base["aligned"][:j], A.affine_weights(with_base["aligned"][:j], base)), theta, task)
        for j in range(1, len(copies) + 1)
    ]  # fmt: skip
    # evaluator's step, not the attacker's: put θ̂ (copy 1's coordinates) into θ's to measure it
    from mpu.privacy.align import align

    no_base_aligned, _ = align(layout, no_base["all"], theta, invert)
    out = {
        "round": round_,
        "copies": len(copies),
        "kappa": server.cfg.kappa,
        "residual": server.cfg.residual,
        # the server's secret, kept apart and named as such: leakage.json is a server-side
        # report; share leakage.md (which never prints α) or strip this key
        "server_secret": {"alphas_by_copy": [alphas[records[c.name].k] for c in copies]},
        "task_vector_norm": task,
        "task_ratio": task / A.norm(theta),
        "one_copy_unaligned": _rel(published[0], theta, task),
        "one_copy_aligned_to_base": combos[0],
        "copies_combined_with_base": combos,
        "all_copies_with_base": combos[-1],
        "weights_found": with_base["weights"],
        "true_weights": combining_weights(server.cfg, alphas, [records[c.name].k for c in copies]),
        "all_copies_without_base": _rel(no_base_aligned, theta, task),
        "blocks_error_all_with_base": _rel(with_base["all"], theta, A.distance(theta, base, blocks), blocks),
        "invariant_distance_copy": A.invariant_distance(layout, published[0], theta),
        "invariant_distance_base": A.invariant_distance(layout, base, theta),
        "logit_gap_one_copy": logit_gap(view.theta_dir, with_base["one"], theta),
        "logit_gap_all_with_base": logit_gap(view.theta_dir, with_base["all"], theta),
        "logit_gap_all_without_base": logit_gap(view.theta_dir, no_base["all"], theta),
        **with_secrets(server, round_, layout, [(Checkpoint(c), records[c.name].k) for c in copies], theta, task),
    }  # fmt: skip
    if data is not None:
        numbers = lambda w: tofu_numbers(view.theta_dir, w, data, forget_split, limit)  # noqa: E731
        out["metrics"] = {"theta": numbers(theta), "reconstruction": numbers(with_base["all"]),
                          "base": numbers(base), "rows": limit}  # fmt: skip
    return out
