"""Post-Process: validate every update, invert T_k, aggregate harmonically, step (MPU.md §7).

All m updates of the round are required (a subset does not cancel the noise: Σ_{k∈S} ε⁰_k ≠ 0),
each is checked (ticket, key set, shapes, dtype, finiteness, norm) before the new model is
committed, and the new θ_{r+1} is streamed tensor by tensor into a staging folder that only
replaces nothing and is renamed into place when everything passed.
"""

from __future__ import annotations

import hmac
import logging
import math
import statistics
from pathlib import Path

import torch

from mpu.arch.base import Layout
from mpu.errors import UpdateRejectedError
from mpu.io.checkpoint import Checkpoint, CheckpointWriter, retype_layout
from mpu.io.delta import DeltaFile
from mpu.protocol.aggregate import HarmonicAccumulator, server_step
from mpu.server.config import JobConfig
from mpu.server.publish import TransformCache, sign_ticket
from mpu.server.state import CopyRecord

log = logging.getLogger("mpu.server")


def match_deltas(
    paths: list[Path], *, job_id: str, round_: int, records: list[CopyRecord], key: bytes | None
) -> list[tuple[CopyRecord, DeltaFile]]:
    """Open each delta and bind it to its copy; refuse wrong job/round/copy, forgeries, duplicates, gaps."""
    by_id = {r.copy_id: r for r in records}
    seen: dict[str, Path] = {}
    matched = []
    for path in paths:
        delta = DeltaFile(path)
        t = delta.ticket
        if t.job_id != job_id:
            raise UpdateRejectedError(
                f"{path}: update belongs to another job ({t.job_id}), this job is {job_id}"
            )
        if t.round != round_:
            raise UpdateRejectedError(
                f"{path}: update is for round {t.round}, the server is at round {round_}"
            )
        if t.copy_id not in by_id:
            raise UpdateRejectedError(
                f"{path}: copy id {t.copy_id} was not published in round {round_}"
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
        seen[t.copy_id] = path
        matched.append((rec, delta))
    missing = [r.folder for r in records if r.copy_id not in seen]
    if missing:
        raise UpdateRejectedError(
            f"missing update for {', '.join(missing)} ({len(seen)} of {len(records)} given): "
            "MPU aggregates all copies of a round or none, a subset does not cancel the noise"
        )
    return matched


def check_layout(theta: Checkpoint, layout: Layout, delta: DeltaFile) -> None:
    want = [n for n in theta.names()]
    have = delta.specs
    missing = [n for n in want if n not in have]
    if missing:
        raise UpdateRejectedError(
            f"{delta.path}: missing tensor {missing[0]!r} ({len(missing)} in all)"
        )
    extra = [n for n in have if n not in theta.file_of]
    if extra:
        raise UpdateRejectedError(
            f"{delta.path}: unknown tensor {extra[0]!r} ({len(extra)} in all)"
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


def _finite_squared_norm(d: torch.Tensor, name: str, path: Path) -> float:
    """‖d‖² in fp32, rejecting NaN/Inf: a non-finite entry makes the norm non-finite, so the
    common case is one pass with no temporaries (`torch.isfinite` allocates |d| and two masks,
    ~1.7× the tensor); the element count is only taken, chunk-wise, to word the error."""
    norm = float(torch.linalg.vector_norm(d))
    if math.isfinite(norm):
        return norm**2
    bad = sum(int((~torch.isfinite(c)).sum()) for c in d.reshape(-1).split(1 << 20))
    if bad:
        raise UpdateRejectedError(f"{path}: tensor {name!r} has {bad} NaN/Inf values")
    raise UpdateRejectedError(f"{path}: tensor {name!r} has a norm that overflows float32")


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
) -> dict:
    """Write θ_{r+1} (fp32) to `out`; returns norms. Raises before `out` exists if any check fails."""
    from tqdm.auto import tqdm

    for _, delta in matched:
        check_layout(theta, layout, delta)
    # accumulate in k order: the same sum, bit for bit, whatever order the deltas came in
    matched = sorted(matched, key=lambda pair: pair[0].k)
    transforms = TransformCache(streams, round_, layout, cfg)
    writer = CheckpointWriter(
        out,
        retype_layout(theta.layout(), {n: torch.float32 for n in theta.names()}),
        aux_from=theta,
        config_updates={"dtype": "float32"},
    )
    sq = [0.0] * len(matched)
    mean_sq = 0.0
    try:
        for name in tqdm(
            theta.names(), desc=f"aggregate round {round_}", disable=not progress, unit="tensor"
        ):
            acc = HarmonicAccumulator()
            for i, (rec, delta) in enumerate(matched):
                d = delta.read(name)
                sq[i] += _finite_squared_norm(d, name, delta.path)
                acc.add(transforms.apply(d, name, rec.k, inverse=True), alphas[rec.k], owned=True)
                del d  # free before the next copy's tensor is read
            mean = acc.mean()
            mean_sq += float(torch.linalg.vector_norm(mean)) ** 2
            # θ is read last: S1, the update being read and θ are never all alive at once
            writer.add(name, server_step(theta.read(name), mean, cfg.server_lr))
            del acc, mean
        norms = [math.sqrt(s) for s in sq]
        median = statistics.median(norms)
        for (_, delta), norm in zip(matched, norms, strict=True):
            if cfg.max_update_norm > 0 and norm > cfg.max_update_norm:
                raise UpdateRejectedError(
                    f"{delta.path}: update norm {norm:.4g} exceeds max_update_norm {cfg.max_update_norm}"
                )
            if len(norms) > 2 and median > 0 and norm > cfg.median_factor * median:
                raise UpdateRejectedError(
                    f"{delta.path}: update norm {norm:.4g} is over {cfg.median_factor}× the median {median:.4g} of the round"
                )
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    stats = {
        "mean_update_norm": math.sqrt(mean_sq),
        "update_norms": {rec.folder: n for (rec, _), n in zip(matched, norms, strict=True)},
    }
    log.info(
        "round %d aggregated: ‖Δ̄‖ = %.4g, ‖Δ'_k‖ = %s",
        round_,
        stats["mean_update_norm"],
        ", ".join(f"{n:.4g}" for n in norms),
    )
    return stats
