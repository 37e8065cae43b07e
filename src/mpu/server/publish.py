"""Pre-Process: calibrate σ, then stream θ_r into m perturbed, reparameterized copies
(docs/protocol.md §2–5).

Tensor-major and pipelined: each tensor of θ_r is read once; its copies are made in one pass
each (θ + α_k ε⁰_k accumulated into one buffer from the m − 1 draws that determine a zero-sum
set, then one fp32 transform) on a small thread pool while the main thread writes the previous
tensors, hashing the files as it writes them. Peak memory is a bounded window of tensors,
whatever m or the model size.

Nothing the client receives reveals the secret copy → k assignment: tensors are generated for
the copies in a key-derived order, every published file and folder carries one modification
time, and per-copy statistics are logged in folder order after all copies are written. Every
published tensor is checked finite before it is written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from mpu.arch.base import Layout
from mpu.errors import CheckpointError, ConfigError
from mpu.io.checkpoint import Checkpoint, CheckpointWriter, TensorSpec, set_mtimes
from mpu.io.delta import Ticket, write_ticket
from mpu.io.pipeline import flat_spans, ordered_map
from mpu.io.transcript import tensor_leaf
from mpu.protocol.noise import copy_noise, noise_basis, sigma_from_moments
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
WORKERS = 2  # tensors computed at once (this machine class has 2 cores)
# Tensors no block map acts on (embeddings, the LM head) and larger than this are made in
# parts of PART_ELEMENTS, written as they come: their copies, draws and fp32 working set would
# otherwise be the peak of the whole pass (SmolLM2's tied embedding is a fifth of the model).
STREAM_ELEMENTS = 1 << 22
WINDOW_FRACTION = 8  # work in flight: at most this fraction of the model's fp32 bytes
PART_ELEMENTS = 1 << 20


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


def sigma_moments(
    name: str,
    t: torch.Tensor,
    base: Checkpoint,
    layout: Layout,
    cfg: JobConfig,
    b: torch.Tensor | None = None,
) -> tuple[str, float, int] | None:
    """(σ key, ‖θ_t − θ_base,t‖², numel) for a noised tensor `t` of θ; None if not noised.
    `b`: the base's tensor when the caller has read it already."""
    key = moment_key(name, tuple(t.shape), base, layout, cfg)
    if key is None:
        return None
    b = base.read(name) if b is None else b
    return key, squared_distance(t, b), t.numel()


def moment_key(
    name: str, shape: tuple[int, ...], base: Checkpoint, layout: Layout, cfg: JobConfig
) -> str | None:
    """The σ key a tensor of this shape contributes a moment to (None: it has no noise of its
    own); refuses a base that lacks the tensor or holds it in another shape."""
    if name in layout.tied or not noised(name, layout, cfg):
        return None
    if name not in base.file_of:
        raise CheckpointError(
            f"{base.path}: base has no tensor {name!r}, needed to calibrate the noise"
        )
    if tuple(base.spec(name).shape) != tuple(shape):
        raise CheckpointError(
            f"{base.path}: base tensor {name!r} has shape {tuple(base.spec(name).shape)}, "
            f"the model {tuple(shape)}"
        )
    return sigma_key(name, layout, cfg)


def squared_distance(t: torch.Tensor, b: torch.Tensor) -> float:
    """‖t − b‖² in fp32 (one tensor, or the same part of both)."""
    diff = t.to(torch.float32) - b.to(t.device, torch.float32)
    return float(torch.linalg.vector_norm(diff)) ** 2


def finish_sigmas(moments: list[tuple[str, float, int]], cfg: JobConfig) -> dict[str, float]:
    """σ per block (or tensor) from summed moments."""
    sum_sq: dict[str, float] = defaultdict(float)
    numel: dict[str, int] = defaultdict(int)
    for key, sq, n in moments:
        sum_sq[key] += sq
        numel[key] += n
    return {key: sigma_from_moments(sum_sq[key], numel[key], cfg.kappa) for key in sum_sq}


def check_sigmas(sigmas: dict[str, float], cfg: JobConfig, where: Path) -> dict[str, float]:
    """Refuse to publish where the noise would vanish (σ = 0 while κ > 0, B7) or overflow."""
    if cfg.kappa > 0:
        zero = [key for key, s in sigmas.items() if s == 0.0]
        if zero:
            raise ConfigError(
                f"{where}: the base equals the model on {zero[0]} ({len(zero)} in all): σ = 0 there, "
                "the noise would silently vanish; give the public pre-fine-tuning checkpoint as --base"
            )
        bad = [key for key, s in sigmas.items() if not math.isfinite(s)]
        if bad:
            raise CheckpointError(
                f"{where}: the noise scale of {bad[0]} is not finite: the model or the base "
                "holds values too large for fp32"
            )
    return sigmas


def publication_dtype(cfg: JobConfig, theta: Checkpoint) -> str:
    """The dtype copies are published in: the setting, or θ's own for 'checkpoint'."""
    if cfg.publish_dtype != "checkpoint":
        return cfg.publish_dtype
    return str(theta.spec(theta.names()[0]).dtype).removeprefix("torch.")


NOISE_FLOOR = 0.01  # of the rounding step of θ's entries in the publication dtype


def check_noise_floor(
    theta: Checkpoint, layout: Layout, cfg: JobConfig, sigmas: dict[str, float],
    norms: dict[str, float], smallest_alpha: float, dtype: torch.dtype,
) -> None:  # fmt: skip
    """Refuse a setting whose least-noised copy would publish some noised tensor unchanged:
    noise α·σ under NOISE_FLOOR × RMS(θ_t)·eps(dtype) rounds away on all but the smallest
    entries, so that copy would hold θ's tensor (T(θ)'s with the maps) as it is. κ = 0 is the
    explicit noise-free control and is not checked."""
    if cfg.kappa == 0:
        return
    eps = torch.finfo(dtype).eps
    for name in theta.names():
        key = sigma_key(name, layout, cfg)
        if not noised(name, layout, cfg) or name in layout.tied or key not in sigmas:
            continue
        rms = norms[name] / math.sqrt(max(theta.spec(name).numel, 1))
        noise, floor = smallest_alpha * sigmas[key], NOISE_FLOOR * rms * eps
        if noise < floor:
            raise ConfigError(
                f"{theta.path}: the least-noised copy (α = {smallest_alpha:g}) would add noise of "
                f"RMS {noise:.3g} to {name!r}, under the floor {floor:.3g} ({NOISE_FLOOR:g} of "
                f"the rounding step of its entries in {str(dtype).removeprefix('torch.')}): that "
                "copy would publish the tensor unchanged; raise kappa or the smallest alpha"
            )


def scan(
    theta: Checkpoint,
    base: Checkpoint,
    layout: Layout,
    cfg: JobConfig,
    *,
    leaves: dict[str, dict] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """One parallel pass over θ (and the base): refuse NaN/Inf, return (σ, ‖θ_t‖ per tensor).
    With `leaves` ({"theta": {}, "base": {}}), also the commitments' leaves of both (init's
    audit-log entry), hashed from the tensors this pass reads anyway."""

    def one(name: str):
        raw = theta.read(name)
        t = raw.to(torch.float32)
        norm = float(torch.linalg.vector_norm(t))
        if not math.isfinite(norm):
            raise CheckpointError(
                f"{theta.path}: tensor {name!r} holds NaN or Inf values (or overflows fp32): "
                "an MPU job needs a finite model"
            )
        b = None
        if leaves is not None:
            leaves["theta"][name] = tensor_leaf(raw)
            if name in base.file_of:
                b = base.read(name)
                leaves["base"][name] = tensor_leaf(b)
        moment = sigma_moments(name, t, base, layout, cfg, b) if cfg.kappa > 0 else None
        return name, norm, moment

    sizes = {n: theta.spec(n).numel * 8 for n in theta.names()}
    norms, moments = {}, []
    for name, norm, moment in ordered_map(
        one, theta.names(), cost=sizes.__getitem__, budget=window_bytes(theta)
    ):
        norms[name] = norm
        if moment is not None:
            moments.append(moment)
    if leaves is not None:  # base tensors the model does not have (rare)
        for name in base.names():
            if name not in leaves["base"]:
                leaves["base"][name] = tensor_leaf(base.read(name))
    return check_sigmas(finish_sigmas(moments, cfg), cfg, base.path), norms


class TransformCache:
    """T_{r,k} per block, regenerated from the keyed stream on first use (fp32 maps)."""

    def __init__(self, streams, round_: int, layout: Layout, cfg: JobConfig, device="cpu"):
        self._streams, self._round, self._layout, self._cfg = streams, round_, layout, cfg
        self._device = torch.device(device)
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
            self._cache[(k, layer)] = bt.to(torch.float32, self._device)
        return self._cache[(k, layer)]

    def warm(self, ks: range) -> None:
        """Draw every block's maps up front (the threads then only read the cache)."""
        for k in ks:
            for layer in self._layout.blocks:
                self.get(k, layer)

    def acts_on(self, name: str) -> bool:
        """Whether a block map changes this tensor (else it passes through as fp32)."""
        info = self._layout.tensors[name]
        return info.layer is not None and info.role.reparameterized

    def streamable(self, checkpoint: Checkpoint, name: str) -> bool:
        """Whether `name` is made in flat parts: large, and elementwise (no map mixes its rows)."""
        return checkpoint.spec(name).numel > STREAM_ELEMENTS and not self.acts_on(name)

    def apply(self, x: torch.Tensor, name: str, k: int, *, inverse: bool = False) -> torch.Tensor:
        info = self._layout.tensors[name]
        if not self.acts_on(name):
            return x.to(torch.float32)
        return transform(
            x, info.role, self._layout.geometry, self.get(k, info.layer), inverse=inverse
        )


def publication_order(streams, round_: int, m: int) -> list[int]:
    """The order in which the copies' tensors are made: a permutation derived from the key,
    so neither k order nor folder order shows in timing."""
    gen = torch.Generator().manual_seed(streams.seed(round_, "publication-order"))
    return torch.randperm(m, generator=gen).tolist()


class _Tensors:
    """The work for one tensor of θ: the m published tensors and their statistics."""

    def __init__(
        self, theta, layout, cfg, streams, transforms, round_, alphas, sigmas, dtype, device
    ):
        self.theta, self.layout, self.cfg, self.streams = theta, layout, cfg, streams
        self.transforms, self.round, self.alphas = transforms, round_, alphas
        self.sigmas, self.dtype, self.device = sigmas, dtype, torch.device(device)
        self.m = len(alphas)
        self.basis = noise_basis(self.m, cfg.noise_design, cfg.lines)
        self.order = publication_order(streams, round_, self.m)

    def _generators(self, name: str) -> tuple[list[torch.Generator], torch.Generator | None]:
        """The keyed streams of this tensor's draws (one per basis column) and of its residual ξ
        (None: none)."""
        if not (noised(name, self.layout, self.cfg) and self.cfg.kappa > 0):
            return [], None
        noise_name = self.layout.tied.get(name, name)
        draws = [self.streams.noise(self.round, noise_name, j) for j in range(self.basis.shape[1])]
        residual = self.streams.residual(noise_name) if self.cfg.residual > 0 else None
        return draws, residual

    def _sigma(self, name: str) -> float:
        return self.sigmas[sigma_key(name, self.layout, self.cfg)]

    def _draw(self, gen: torch.Generator, shape, scale: float) -> torch.Tensor:
        y = torch.randn(tuple(shape), generator=gen, dtype=torch.float32)
        return y.mul_(scale).to(self.device)

    def __call__(self, name: str) -> tuple[str, list[torch.Tensor] | None, list[tuple[int, int]]]:
        """The m published tensors of `name`, or (name, None, []) for a tensor made in parts
        (`parts(name)`, consumed by the writing thread)."""
        if self.transforms.streamable(self.theta, name):
            return name, None, []
        gens, residual = self._generators(name)
        x = self.theta.read(name).to(device=self.device, dtype=torch.float32)
        if residual is not None:  # θ + ξ, shared by every copy (see JobConfig)
            x = x.add_(self._draw(residual, x.shape, self.cfg.residual * self._sigma(name)))
        draws = [self._draw(g, x.shape, self._sigma(name)) for g in gens] or None
        return (name, *self._copies(name, x, draws))

    def parts(self, name: str):
        """(the m copies' parts, their change counts) for each flat span of `name`, in order:
        the same bits as `self(name)` (one generator per draw, advanced span by span)."""
        gens, residual = self._generators(name)
        for start, stop in flat_spans(self.theta.spec(name).numel, PART_ELEMENTS):
            x = self.theta.read_flat(name, start, stop).to(device=self.device, dtype=torch.float32)
            if residual is not None:
                x = x.add_(self._draw(residual, x.shape, self.cfg.residual * self._sigma(name)))
            draws = [self._draw(g, x.shape, self._sigma(name)) for g in gens] or None
            yield self._copies(name, x, draws)

    def _copies(
        self, name: str, x: torch.Tensor, draws: list[torch.Tensor] | None
    ) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        outs: list[torch.Tensor | None] = [None] * self.m
        changed = [(0, 0)] * self.m
        for k in self.order:
            if draws is None:
                y = self.transforms.apply(x, name, k)
            else:
                y = self.transforms.apply(
                    copy_noise(draws, self.basis, k, self.alphas[k], x), name, k
                )
            if not math.isfinite(float(torch.linalg.vector_norm(y))):
                raise CheckpointError(
                    f"{self.theta.path}: the published tensor {name!r} is not finite (NaN/Inf in "
                    "the model, or κ too large for fp32): nothing was published"
                )
            out = y.to(self.dtype)
            if draws is not None and self.dtype != torch.float32:  # did the noise survive the cast?
                clean = self.transforms.apply(x, name, k).to(self.dtype)
                changed[k] = (int(torch.count_nonzero(out != clean)), x.numel())
            outs[k] = out.cpu()
        return outs, changed


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
    stage_in: Path | None = None,
    device: str = "cpu",
) -> dict[str, dict]:
    """Write every copy folder of the round under `out_dir`; returns per-folder noise statistics."""
    from mpu.logs import progress_bar

    m = len(alphas)
    transforms = TransformCache(streams, round_, layout, cfg, device)
    transforms.warm(range(m))
    by_k = sorted(records, key=lambda r: r.k)
    # every file operation runs in folder-name order, never in the secret k order: inode
    # numbers and change times follow creation order on most file systems (docs/robustness.md)
    order = [r.k for r in sorted(records, key=folder_number)]
    rename, writers = _copy_writers(theta, layout, cfg, by_k, order, out_dir, publish_dtype,
                                    stage_in)  # fmt: skip
    work = _Tensors(
        theta, layout, cfg, streams, transforms, round_, alphas, sigmas, publish_dtype, device
    )
    changed = [[0, 0] for _ in range(m)]
    worst = [1.0] * m
    names = [n for n in theta.names() if rename[n] is not None]
    bar = progress_bar(
        total=len(names),
        desc=f"publish round {round_} ({m} copies)",
        disable=not progress,
        unit="tensor",
    )
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    try:

        def cost(name: str) -> int:  # parts are made on this thread, a part at a time
            streamed = transforms.streamable(theta, name)
            return 0 if streamed else theta.spec(name).numel * 4 * (m + 1)

        results = ordered_map(work, names, cost=cost, budget=window_bytes(theta, transforms),
                              workers=WORKERS)  # fmt: skip
        for name, outs, stats in results:
            if outs is None:  # a large elementwise tensor: made and written part by part
                stats = _write_parts(writers, order, rename[name], work.parts(name))
            else:
                for k in order:
                    writers[k].add(rename[name], outs[k])
            _count(changed, worst, stats)
            bar.update(1)
        when = time.time()  # one time for every file of every copy: no write order shows

        # the copies' last flushes to disk (fsync) run side by side
        futures = [pool.submit(_commit, by_k[k], writers[k], job_id, round_, key, when)
                   for k in order]  # fmt: skip
        for fut in futures:
            fut.result()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
    return _report(by_k, changed, worst, cfg, publish_dtype)


def _commit(rec: CopyRecord, writer: CheckpointWriter, job_id: str, round_: int,
            key: bytes | None, when: float) -> None:  # fmt: skip
    """Finish one copy: its signed ticket and the round's one file time, then the rename."""

    def ticket_and_times(stage: Path) -> None:
        rec.weights_sha256 = dict(writer.sha256)
        rec.commitment = writer.commitment
        ticket = Ticket(job_id, round_, rec.copy_id, rec.weights_sha256, tag="")
        tag = sign_ticket(key, ticket) if key is not None else ""
        write_ticket(stage, Ticket(job_id, round_, rec.copy_id, rec.weights_sha256, tag=tag))
        set_mtimes(stage, when)

    writer.commit(before_rename=ticket_and_times)


def _copy_writers(theta: Checkpoint, layout: Layout, cfg: JobConfig, by_k: list[CopyRecord],
                  order: list[int], out_dir: Path, publish_dtype: torch.dtype,
                  stage_in: Path | None) -> tuple[dict, list[CheckpointWriter]]:  # fmt: skip
    """θ's name → the copy's, and one writer per copy (indexed by k), created in `order`."""
    rename, config_updates = copy_names(theta, layout, cfg)
    out_layout = [(f, [TensorSpec(rename[s.name], publish_dtype, s.shape) for s in specs
                       if rename[s.name] is not None]) for f, specs in theta.layout()]  # fmt: skip
    dtype_name = str(publish_dtype).removeprefix("torch.")
    made = {}
    for k in order:
        made[k] = CheckpointWriter(
            out_dir / by_k[k].folder,
            [(f, specs) for f, specs in out_layout if specs],
            aux_from=theta,
            config_updates={"dtype": dtype_name, **config_updates},
            stage_in=stage_in,
            hash_contents=True,
            hash_tensors=True,
            durable=False,  # copies are regenerated byte for byte from θ_r and the key
        )
    return rename, [made[k] for k in range(len(by_k))]


def _count(changed: list[list[int]], worst: list[float], stats) -> None:
    """Add one tensor's (moved, total) per copy to the copies' change counts."""
    for k, (moved, total) in enumerate(stats):
        if total:
            changed[k][0] += moved
            changed[k][1] += total
            worst[k] = min(worst[k], moved / total)


def copy_names(theta: Checkpoint, layout: Layout, cfg: JobConfig) -> tuple[dict, dict]:
    """θ's tensor name → the copy's (None: not published), and the copy's config.json updates:
    the identity and nothing for ordinary copies, the emulator's renumbering otherwise."""
    from mpu.server.emulator import emulator_of

    emulator = emulator_of(cfg, layout)
    if emulator is None:
        return {n: n for n in theta.names()}, {}
    rename = {n: emulator.copy_name(layout, n) for n in theta.names()}
    return rename, emulator.config(theta.config)


def folder_number(rec: CopyRecord) -> int:
    """A copy folder's public number (copy-3 → 3): the order of every file operation."""
    return int(rec.folder.split("-")[1])


def _write_parts(
    writers: list[CheckpointWriter], order: list[int], name: str, parts
) -> list[tuple[int, int]]:
    """Write each copy's parts of `name` as they come (copies in `order`); returns the
    tensor's change counts."""
    totals = [[0, 0] for _ in writers]
    for k in order:
        writers[k].begin(name)
    for outs, stats in parts:
        for k in order:
            writers[k].write_part(outs[k])
            totals[k][0] += stats[k][0]
            totals[k][1] += stats[k][1]
    for k in order:
        writers[k].end()
    return [(moved, total) for moved, total in totals]


def window_bytes(theta: Checkpoint, transforms: TransformCache | None = None) -> int:
    """How many bytes of work may be in flight: 1/WINDOW_FRACTION of the model's fp32 bytes
    (flat memory), at least one tensor (one that is not made in parts)."""
    sizes = [theta.spec(n).numel * 4 for n in theta.names()]
    whole = [
        size
        for n, size in zip(theta.names(), sizes, strict=True)
        if transforms is None or not transforms.streamable(theta, n)
    ]
    return max(max(whole, default=0), sum(sizes) // WINDOW_FRACTION)


def _report(by_k, changed, worst, cfg: JobConfig, dtype) -> dict[str, dict]:
    """Per-folder statistics, logged in folder order (never in the secret k order)."""
    stats = {}
    for k, rec in sorted(enumerate(by_k), key=lambda kr: folder_number(kr[1])):
        frac = changed[k][0] / changed[k][1] if changed[k][1] else None
        stats[rec.folder] = {
            "changed_fraction": frac,
            "worst_tensor_changed_fraction": worst[k] if frac is not None else None,
        }
        if frac is None:
            continue
        log.debug("%s: the noise survived the cast to %s in %.1f%% of noised entries",
                  rec.folder, dtype, 100 * frac)  # fmt: skip
        if worst[k] < cfg.min_changed_fraction:
            log.warning(
                "%s: in some tensor only %.1f%% of entries changed after the cast to %s: the "
                "publication dtype erases the noise there (F8); publish float32 or raise kappa",
                rec.folder,
                100 * worst[k],
                dtype,
            )
    return stats
