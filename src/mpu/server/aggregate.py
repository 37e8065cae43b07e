"""Post-Process: validate every update, invert T_k, aggregate with the job's weights
(extrapolation, harmonic or uniform), step (docs/protocol.md §7).

All m updates of the round are required (a subset does not cancel the noise:
Σ_{k∈S} ε⁰_k ≠ 0). Each is checked before the new model is committed: the ticket first (job,
round, copy, HMAC, the hashes of the weights it was computed from) — before its tensor index is
even parsed — then the key set, shapes, dtype, finiteness and size: no update may change a tensor
by more than `max_update_ratio` × that tensor's norm in θ, exceed `max_update_norm`, or be more
than `median_factor` times the others (the median for m > 2, the smaller one for m = 2). The
new θ_{r+1} is streamed tensor by tensor into a staging folder, checked finite, and renamed into
place only when everything passed.
"""

from __future__ import annotations

import hmac
import logging
import math
import statistics
from pathlib import Path

import torch

from mpu.arch.base import Layout
from mpu.errors import UpdateRejectedError, printable
from mpu.io.checkpoint import Checkpoint, CheckpointWriter, retype_layout
from mpu.io.delta import DeltaFile
from mpu.io.pipeline import flat_spans, ordered_map
from mpu.io.transcript import PartsLeaf, combine
from mpu.protocol.aggregate import HarmonicAccumulator, server_step
from mpu.server import publish
from mpu.server.config import JobConfig
from mpu.server.publish import (
    TransformCache,
    finish_sigmas,
    moment_key,
    sigma_moments,
    sign_ticket,
    squared_distance,
)
from mpu.server.state import CopyRecord

log = logging.getLogger("mpu.server")


def match_deltas(
    paths: list[Path],
    *,
    job_id: str,
    round_: int,
    records: list[CopyRecord],
    key: bytes | None,
    max_tensors: int | None = None,
) -> list[tuple[CopyRecord, DeltaFile]]:
    """Open each delta and bind it to its copy; refuse wrong job/round/copy, forgeries, duplicates, gaps."""
    by_id = {r.copy_id: r for r in records}
    seen: dict[str, Path] = {}
    matched = []

    def check(delta: DeltaFile) -> None:
        path, t = delta.path, delta.ticket
        if t.job_id != job_id:
            raise UpdateRejectedError(
                f"{path}: update belongs to another job ({printable(t.job_id)}), this job is {job_id}"
            )
        if t.round != round_:
            raise UpdateRejectedError(
                f"{path}: update is for round {t.round}, the server is at round {round_}"
            )
        if t.copy_id not in by_id:
            raise UpdateRejectedError(
                f"{path}: copy id {printable(t.copy_id)} was not published in round {round_}"
            )
        rec = by_id[t.copy_id]
        if key is not None and not hmac.compare_digest(t.tag, sign_ticket(key, t)):
            raise UpdateRejectedError(
                f"{path}: ticket signature does not verify (edited or forged ticket)"
            )
        if t.weights_sha256 != rec.weights_sha256:
            raise UpdateRejectedError(
                f"{path}: update was computed from other weights than the published {rec.folder}"
            )
        if t.copy_id in seen:
            raise UpdateRejectedError(
                f"{path}: update for {rec.folder} given twice (also {seen[t.copy_id]})"
            )

    for path in paths:
        delta = DeltaFile(path, max_tensors=max_tensors, check=check)
        seen[delta.ticket.copy_id] = path
        matched.append((by_id[delta.ticket.copy_id], delta))
    missing = [r.folder for r in records if r.copy_id not in seen]
    if missing:
        raise UpdateRejectedError(
            f"missing update for {', '.join(missing)} ({len(seen)} of {len(records)} given): "
            "MPU aggregates all copies of a round or none, a subset does not cancel the noise"
        )
    return matched


def check_layout(theta: Checkpoint, layout: Layout, delta: DeltaFile) -> None:
    want = theta.names()
    have = delta.specs
    missing = [n for n in want if n not in have]
    if missing:
        raise UpdateRejectedError(
            f"{delta.path}: missing tensor {missing[0]!r} ({len(missing)} in all)"
        )
    extra = [n for n in have if n not in theta.file_of]
    if extra:
        raise UpdateRejectedError(
            f"{delta.path}: unknown tensor {printable(extra[0])!r} ({len(extra)} in all)"
        )
    for name in want:
        spec, ref = have[name], theta.spec(name)
        if spec.shape != ref.shape:
            raise UpdateRejectedError(
                f"{delta.path}: tensor {name!r} has shape {spec.shape}, the model {ref.shape}"
            )
        if spec.dtype != torch.float32:
            raise UpdateRejectedError(
                f"{delta.path}: tensor {name!r} is {spec.dtype}; updates must be float32"
            )


def _finite_norm(
    d: torch.Tensor, name: str, path: Path, span: tuple[int, int] | None = None
) -> float:
    """‖d‖ in fp32, rejecting NaN/Inf: a non-finite entry makes the norm non-finite, so the
    common case is one pass with no temporaries (`torch.isfinite` allocates |d| and two masks,
    ~1.7× the tensor); the element count is only taken, chunk-wise, to word the error.
    `span`: d is elements [start, stop) of the tensor."""
    norm = float(torch.linalg.vector_norm(d))
    if math.isfinite(norm):
        return norm
    where = f" in elements {span[0]}–{span[1] - 1}" if span else ""
    bad = sum(int((~torch.isfinite(c)).sum()) for c in d.reshape(-1).split(1 << 20))
    if bad:
        raise UpdateRejectedError(f"{path}: tensor {name!r} has {bad} NaN/Inf values{where}")
    raise UpdateRejectedError(f"{path}: tensor {name!r} has a norm that overflows float32{where}")


RMS_FLOOR = 0.1  # tensors with a smaller RMS (zero biases) are bounded as if it were this


def _check_tensor_bound(
    norm: float, theta_norm: float | None, numel: int, name: str, path: Path, cfg: JobConfig
) -> None:
    """No update may change a tensor by more than max_update_ratio × its norm in θ (measured at
    publication), with an RMS floor so that near-zero tensors can still move."""
    if cfg.max_update_ratio <= 0 or theta_norm is None:
        return
    scale = max(theta_norm, RMS_FLOOR * math.sqrt(numel))
    if norm > cfg.max_update_ratio * scale:
        raise UpdateRejectedError(
            f"{path}: the update changes tensor {name!r} by {norm:.4g} (L2), more than "
            f"max_update_ratio={cfg.max_update_ratio:g} × that tensor's norm in the model (a "
            "diverged or forged update; set max_update_ratio=0 to accept it). The model's norm "
            "is not printed: this message can reach the client"
        )


def _check_round_norms(matched, norms: list[float], cfg: JobConfig) -> None:
    """The absolute bound, and agreement between the copies' update sizes."""
    for (_, delta), norm in zip(matched, norms, strict=True):
        if cfg.max_update_norm > 0 and norm > cfg.max_update_norm:
            raise UpdateRejectedError(
                f"{delta.path}: update norm {norm:.4g} exceeds max_update_norm {cfg.max_update_norm}"
            )
    if len(norms) == 2:  # the median of two is their mean: compare with the smaller instead
        small, large = sorted(norms)
        if large > cfg.median_factor * max(small, 1e-30) and large > 0:
            path = matched[norms.index(large)][1].path
            raise UpdateRejectedError(
                f"{path}: update norm {large:.4g} is over {cfg.median_factor:g}× the other "
                f"copy's {small:.4g}: the copies' updates must be alike (same client, same data)"
            )
    elif len(norms) > 2:
        median = statistics.median(norms)
        for (_, delta), norm in zip(matched, norms, strict=True):
            if median > 0 and norm > cfg.median_factor * median:
                raise UpdateRejectedError(
                    f"{delta.path}: update norm {norm:.4g} is over {cfg.median_factor:g}× the "
                    f"median {median:.4g} of the round"
                )


def aggregate_updates(
    theta: Checkpoint,
    layout: Layout,
    matched: list[tuple[CopyRecord, DeltaFile]],
    *,
    streams,
    round_: int,
    alphas: list[float],
    cfg: JobConfig,
    out: Path,
    progress: bool = True,
    theta_norms: dict[str, float] | None = None,
    device: str = "cpu",
    base: Checkpoint | None = None,
) -> tuple[dict, dict[str, float], dict[str, float]]:
    """Write θ_{r+1} (fp32) to `out`. Returns (update statistics, the next round's σ, ‖θ_{r+1,t}‖)
    — the next publication needs both, and the new tensors are in hand here. Raises before
    `out` exists if any check fails."""
    for _, delta in matched:
        check_layout(theta, layout, delta)
    # accumulate in k order: the same sum, bit for bit, whatever order the deltas came in
    matched = sorted(matched, key=lambda pair: pair[0].k)
    fold = _RoundFold(theta, layout, matched, streams=streams, round_=round_, alphas=alphas,
                      cfg=cfg, out=out, bounds=theta_norms or {}, device=device, base=base)  # fmt: skip
    norms, mean_sq, sigmas, new_norms = fold.run(progress)
    for rec, delta in matched:  # an emulator update's frozen blocks: hashed, never applied
        if hasattr(delta, "unread_leaves"):
            fold.leaves[rec.copy_id].update(delta.unread_leaves())
    by_folder = sorted(
        ((rec.folder, n) for (rec, _), n in zip(matched, norms, strict=True)),
        key=lambda fn: int(fn[0].split("-")[1]),
    )
    stats = {"mean_update_norm": math.sqrt(mean_sq), "update_norms": dict(by_folder),
             "commitments": {"result": fold.writer.commitment,
                             "deltas": {c: combine(v) for c, v in fold.leaves.items()}}}  # fmt: skip
    log.info(
        "round %d aggregated: ‖Δ̄‖ = %.4g, ‖Δ'‖ by copy folder: %s",
        round_,
        stats["mean_update_norm"],
        ", ".join(f"{folder} {n:.4g}" for folder, n in by_folder),
    )
    return stats, sigmas, new_norms


class _RoundFold:
    """One round's aggregation, tensor by tensor: each copy's update mapped back and weighted
    into the sum, θ_{r+1} = θ_r + η·Δ̄ written, the norms and σ moments the next round needs
    gathered, every bound checked before anything is committed."""

    def __init__(self, theta, layout, matched, *, streams, round_, alphas, cfg, out, bounds,
                 device, base) -> None:  # fmt: skip
        self.theta, self.layout, self.matched = theta, layout, matched
        self.round_, self.alphas, self.cfg = round_, alphas, cfg
        self.bounds, self.device, self.base = bounds, device, base
        self.transforms = TransformCache(streams, round_, layout, cfg, device)
        self.transforms.warm(range(len(alphas)))  # the threads only read the cache
        self.writer = CheckpointWriter(
            out,
            retype_layout(theta.layout(), {n: torch.float32 for n in theta.names()}),
            aux_from=theta,
            config_updates={"dtype": "float32"},
            hash_tensors=True,
        )
        self.leaves: dict[str, dict] = {rec.copy_id: {} for rec, _ in matched}  # commitments
        self.weights = cfg.weights(alphas)
        self.moments_wanted = base is not None and cfg.kappa > 0

    def add(self, acc: HarmonicAccumulator, d: torch.Tensor, name: str, rec: CopyRecord) -> None:
        """One copy's update, mapped back, into the sum. Harmonic and uniform add with 1/α
        (1/1) as before, so jobs made before extrapolation replay bit for bit."""
        d = self.transforms.apply(d, name, rec.k, inverse=True)
        if self.cfg.aggregation == "harmonic":
            acc.add(d, self.alphas[rec.k], owned=True)
        elif self.cfg.aggregation == "uniform":
            acc.add(d, 1.0, owned=True)
        else:
            acc.add_weighted(d, self.weights[rec.k], owned=True)

    def new_tensor_norm(self, new: torch.Tensor, name: str, squared: float | None = None) -> float:
        norm = float(torch.linalg.vector_norm(new)) if squared is None else math.sqrt(squared)
        if not math.isfinite(norm):
            raise UpdateRejectedError(
                f"{self.theta.path}: the new model's tensor {name!r} would not be finite "
                "(θ + η·Δ̄ overflows fp32): nothing was written"
            )
        return norm

    def record_leaf(self, rec, delta, name: str, leaf: tuple) -> None:
        """The commitment leaf of the update's tensor `name`, under the name the update file
        stores it by: an emulator copy's update is read in θ's names, with zeros for the blocks
        the copy lacks, but its logged commitment must be the file's (`mpu verify`)."""
        stored = delta.stored_name(name) if hasattr(delta, "stored_name") else name
        if stored is not None:
            self.leaves[rec.copy_id][stored] = leaf

    def fold(
        self, name: str
    ) -> tuple[str, torch.Tensor | None, list[float], float, float, tuple | None]:
        """θ_{r+1}[name], the copies' squared update norms, ‖Δ̄‖², ‖θ_{r+1}[name]‖ and its σ
        moment for one tensor; (name, None, …) for a tensor made in parts (`fold_parts`)."""
        if self.transforms.streamable(self.theta, name):
            return name, None, [], 0.0, 0.0, None
        acc = HarmonicAccumulator()
        sq = []
        for rec, delta in self.matched:
            leaf = PartsLeaf(torch.float32, tuple(self.theta.spec(name).shape))
            d = delta.read(name, leaf.update_bytes)  # hashed slice by slice as it is read
            self.record_leaf(rec, delta, name, leaf.leaf())
            d = d.to(self.device)
            norm = _finite_norm(d, name, delta.path)
            _check_tensor_bound(norm, self.bounds.get(name), d.numel(), name, delta.path, self.cfg)
            sq.append(norm**2)
            self.add(acc, d, name, rec)
            del d  # free before the next copy's tensor is read
        mean = acc.mean()
        mean_sq = float(torch.linalg.vector_norm(mean)) ** 2
        # θ is read last: S1, the update being read and θ are never all alive at once
        new = server_step(self.theta.read(name).to(self.device), mean, self.cfg.server_lr)
        new_norm = self.new_tensor_norm(new, name)
        moment = (
            sigma_moments(name, new, self.base, self.layout, self.cfg)
            if self.moments_wanted
            else None
        )
        return name, new.cpu(), sq, mean_sq, new_norm, moment

    def fold_parts(self, name: str) -> tuple[list[float], float, float, tuple | None]:
        """`fold` for a large elementwise tensor, a flat span at a time, each part of θ_{r+1}
        written as it is made (same bits as `fold`; the bounds are checked at the end, before
        anything is committed)."""
        numel = self.theta.spec(name).numel
        shape = tuple(self.theta.spec(name).shape)
        key = (
            moment_key(name, shape, self.base, self.layout, self.cfg)
            if self.moments_wanted
            else None
        )
        hashers = [PartsLeaf(torch.float32, shape) for _ in self.matched]
        sq, mean_sq, new_sq, moment_sq = [0.0] * len(self.matched), 0.0, 0.0, 0.0
        self.writer.begin(name)
        for span in flat_spans(numel, publish.PART_ELEMENTS):
            acc = HarmonicAccumulator()
            for i, (rec, delta) in enumerate(self.matched):
                d = delta.read_flat(name, *span, hashers[i].update_bytes)
                d = d.to(self.device)
                sq[i] += _finite_norm(d, name, delta.path, span) ** 2
                self.add(acc, d, name, rec)
                del d
            mean = acc.mean()
            mean_sq += float(torch.linalg.vector_norm(mean)) ** 2
            theta_part = self.theta.read_flat(name, *span).to(self.device)
            new = server_step(theta_part, mean, self.cfg.server_lr)
            new_sq += self.new_tensor_norm(new, name) ** 2
            if key is not None:
                moment_sq += squared_distance(new, self.base.read_flat(name, *span))
            self.writer.write_part(new.cpu())
        self.writer.end()
        new_norm = self.new_tensor_norm(None, name, new_sq)
        for (rec, delta), h, copy_sq in zip(self.matched, hashers, sq, strict=True):
            _check_tensor_bound(math.sqrt(copy_sq), self.bounds.get(name), numel, name,
                                delta.path, self.cfg)  # fmt: skip
            self.record_leaf(rec, delta, name, h.leaf())
        return sq, mean_sq, new_norm, (key, moment_sq, numel) if key is not None else None

    def run(self, progress: bool) -> tuple[list[float], float, dict, dict[str, float]]:
        """Every tensor folded and written, then committed: (the copies' update norms, ‖Δ̄‖²,
        the next round's σ, ‖θ_{r+1,t}‖ by tensor). Nothing is committed when a check fails."""
        from mpu.logs import progress_bar

        theta, transforms = self.theta, self.transforms
        names = theta.names()
        sizes = {n: theta.spec(n).numel * 4 for n in names}
        sq = [0.0] * len(self.matched)
        mean_sq = 0.0
        new_norms: dict[str, float] = {}
        moments = []
        bar = progress_bar(total=len(names), desc=f"aggregate round {self.round_}",
                           disable=not progress, unit="tensor")  # fmt: skip
        try:
            for name, new, tensor_sq, tensor_mean_sq, new_norm, moment in ordered_map(
                self.fold,
                names,
                cost=lambda n: 0 if transforms.streamable(theta, n) else 3 * sizes[n],
                budget=publish.window_bytes(theta, transforms),
            ):
                if new is None:
                    tensor_sq, tensor_mean_sq, new_norm, moment = self.fold_parts(name)
                else:
                    self.writer.add(name, new)
                new_norms[name] = new_norm
                if moment is not None:
                    moments.append(moment)
                sq = [a + b for a, b in zip(sq, tensor_sq, strict=True)]
                mean_sq += tensor_mean_sq
                bar.update(1)
            norms = [math.sqrt(s) for s in sq]
            _check_round_norms(self.matched, norms, self.cfg)
            sigmas = finish_sigmas(moments, self.cfg) if self.moments_wanted else {}
            self.writer.commit()
        except BaseException:
            self.writer.abort()
            raise
        finally:
            bar.close()
        return norms, mean_sq, sigmas, new_norms
