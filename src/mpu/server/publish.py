"""Pre-Process: calibrate σ, then stream θ_r into m perturbed, reparameterized copies (MPU.md §2–5).

Tensor-major: each tensor of θ_r is read once, its m noise draws are generated from the keyed
streams and centred, and copy k's tensor T_k(θ + ε_k) goes straight to copy k's file. Peak
memory is a few tensors, whatever m or the model size.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections import defaultdict
from pathlib import Path

import torch

from mpu.arch.base import Layout
from mpu.errors import CheckpointError, ConfigError
from mpu.io.checkpoint import Checkpoint, CheckpointWriter, retype_layout
from mpu.io.delta import Ticket, write_ticket
from mpu.protocol.noise import copy_noises, sigma_from_moments
from mpu.protocol.reparam import (
    BlockTransform,
    identity_transform,
    sample_block_transform,
    transform,
)
from mpu.server.config import JobConfig
from mpu.server.state import CopyRecord

log = logging.getLogger("mpu.server")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sign_ticket(key: bytes, ticket: Ticket) -> str:
    msg = json.dumps(ticket.signed_fields(), separators=(",", ":")).encode()
    return hmac.new(key, b"mpu-ticket\x00" + msg, hashlib.sha256).hexdigest()


def noised(name: str, layout: Layout, cfg: JobConfig) -> bool:
    return layout.block_of(name) is not None or cfg.noise_scope == "all"


def sigma_key(name: str, layout: Layout, cfg: JobConfig) -> str:
    """Which σ a tensor uses: its block's (pooled) or its own (per-tensor or outside blocks)."""
    layer = layout.block_of(layout.tied.get(name, name))
    if layer is not None and cfg.sigma_granularity == "block":
        return f"block{layer}"
    return layout.tied.get(name, name)


def compute_sigmas(
    theta: Checkpoint, base: Checkpoint, layout: Layout, cfg: JobConfig
) -> dict[str, float]:
    """σ per block (or tensor) from RMS(θ_r − θ_base) in fp32; abort where noise would vanish (B7)."""
    sum_sq: dict[str, float] = defaultdict(float)
    numel: dict[str, int] = defaultdict(int)
    for name in theta.names():
        if name in layout.tied or not noised(name, layout, cfg):
            continue
        if name not in base.file_of:
            raise CheckpointError(
                f"{base.path}: base has no tensor {name!r}, needed to calibrate the noise"
            )
        t, b = theta.read(name).to(torch.float32), base.read(name).to(torch.float32)
        if t.shape != b.shape:
            raise CheckpointError(
                f"{base.path}: base tensor {name!r} has shape {tuple(b.shape)}, the model {tuple(t.shape)}"
            )
        key = sigma_key(name, layout, cfg)
        sum_sq[key] += float(torch.linalg.vector_norm(t - b)) ** 2
        numel[key] += t.numel()
    sigmas = {key: sigma_from_moments(sum_sq[key], numel[key], cfg.kappa) for key in sum_sq}
    if cfg.kappa > 0:
        zero = [key for key, s in sigmas.items() if s == 0.0]
        if zero:
            raise ConfigError(
                f"{base.path}: the base equals the model on {zero[0]} ({len(zero)} in all): σ = 0 there, "
                "the noise would silently vanish; give the public pre-fine-tuning checkpoint as --base"
            )
    return sigmas


class TransformCache:
    """T_{r,k} per block, regenerated from the keyed stream on first use."""

    def __init__(self, streams, round_: int, layout: Layout, cfg: JobConfig):
        self._streams, self._round, self._layout, self._cfg = streams, round_, layout, cfg
        self._cache: dict[tuple[int, int], BlockTransform] = {}

    def get(self, k: int, layer: int) -> BlockTransform:
        if (k, layer) not in self._cache:
            g = self._layout.geometry
            if not self._cfg.reparameterize:
                bt = identity_transform(g)
            else:
                gen = self._streams.transform(self._round, k + 1, layer)
                bt = sample_block_transform(
                    g, gen, angles=self._cfg.angles, vo_map=self._cfg.vo_map
                )
            self._cache[(k, layer)] = bt
        return self._cache[(k, layer)]

    def apply(self, x: torch.Tensor, name: str, k: int, *, inverse: bool = False) -> torch.Tensor:
        info = self._layout.tensors[name]
        if info.layer is None or not info.role.reparameterized:
            return x.to(torch.float32)
        return transform(
            x, info.role, self._layout.geometry, self.get(k, info.layer), inverse=inverse
        )


def publish_copies(
    theta: Checkpoint,
    layout: Layout,
    *,
    streams,
    round_: int,
    alphas: list[float],
    records: list[CopyRecord],
    sigmas: dict[str, float],
    cfg: JobConfig,
    out_dir: Path,
    publish_dtype: torch.dtype,
    job_id: str,
    key: bytes | None,
    progress: bool = True,
) -> dict[str, dict]:
    """Write every copy folder of the round under `out_dir`; returns per-folder noise statistics."""
    from tqdm.auto import tqdm

    m = len(alphas)
    transforms = TransformCache(streams, round_, layout, cfg)
    out_layout = retype_layout(theta.layout(), {n: publish_dtype for n in theta.names()})
    by_k = sorted(records, key=lambda r: r.k)
    writers = [
        CheckpointWriter(
            out_dir / r.folder,
            out_layout,
            aux_from=theta,
            config_updates={"dtype": str(publish_dtype).removeprefix("torch.")},
        )
        for r in by_k
    ]
    changed = [
        [0, 0] for _ in range(m)
    ]  # entries changed by the noise after the cast, entries noised
    worst = [1.0] * m
    try:
        for name in tqdm(
            theta.names(),
            desc=f"publish round {round_} ({m} copies)",
            disable=not progress,
            unit="tensor",
        ):
            x = theta.read(name).to(torch.float32)
            eps = None
            if noised(name, layout, cfg) and cfg.kappa > 0:
                noise_name = layout.tied.get(name, name)
                sigma = sigmas[sigma_key(name, layout, cfg)]
                eps = copy_noises(
                    x.shape, sigma, alphas, lambda j, n=noise_name: streams.noise(round_, n, j)
                )
            for k in range(m):
                clean = transforms.apply(x, name, k)
                if eps is None:
                    writers[k].add(name, clean.to(publish_dtype))
                    continue
                published = (clean + transforms.apply(eps[k], name, k)).to(publish_dtype)
                moved = int(torch.count_nonzero(published != clean.to(publish_dtype)))
                changed[k][0] += moved
                changed[k][1] += x.numel()
                worst[k] = min(worst[k], moved / max(1, x.numel()))
                writers[k].add(name, published)
        stats = {}
        for k, (rec, writer) in enumerate(zip(by_k, writers, strict=True)):

            def finish(stage: Path, rec=rec) -> None:
                rec.weights_sha256 = Checkpoint(stage).sha256()
                ticket = Ticket(job_id, round_, rec.copy_id, rec.weights_sha256, tag="")
                tag = sign_ticket(key, ticket) if key is not None else ""
                write_ticket(
                    stage, Ticket(job_id, round_, rec.copy_id, rec.weights_sha256, tag=tag)
                )

            writer.commit(before_rename=finish)
            frac = changed[k][0] / changed[k][1] if changed[k][1] else None
            stats[rec.folder] = {
                "changed_fraction": frac,
                "worst_tensor_changed_fraction": worst[k] if frac is not None else None,
            }
            if frac is not None:
                log.debug(
                    "%s: the noise survived the cast to %s in %.1f%% of noised entries",
                    rec.folder,
                    publish_dtype,
                    100 * frac,
                )
                if worst[k] < cfg.min_changed_fraction:
                    log.warning(
                        "%s: in some tensor only %.1f%% of entries changed after the cast to %s: the "
                        "publication dtype erases the noise there (F8); publish float32 or raise kappa",
                        rec.folder,
                        100 * worst[k],
                        publish_dtype,
                    )
        return stats
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
