"""`mpu client diff`: turn a published copy and the client's unlearned model into a delta.

The client may unlearn with any tool (OpenUnlearning, TRL, its own loop); all MPU needs back
is Δ' = P⁺ − P for every tensor of the copy, in fp32, carrying the copy's ticket. The
"after" folder may store another dtype (bf16 training) or add a tied `lm_head` duplicate; a
missing tensor, another shape or a non-finite value is refused before anything is written.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from mpu.errors import CheckpointError
from mpu.io.checkpoint import Checkpoint
from mpu.io.delta import delta_metadata, read_ticket
from mpu.io.safetensors_stream import SafetensorsWriter, TensorSpec
from mpu.privacy.dp import DPConfig, clip_factor, gaussian_noise

log = logging.getLogger("mpu.client")


def make_delta(
    before: str | Path,
    after: str | Path,
    out: str | Path,
    *,
    stats: dict | None = None,
    dp: DPConfig | None = None,
) -> Path:
    """Write the delta file `out` = after − before (fp32), with the ticket of `before`.

    `stats`, when given, receives `changed_fraction`: the share of entries that changed (the
    check that the unlearning moved the model), and with `dp` the clipping and the ε spent. With
    `dp` enabled the update is clipped to L2 norm `dp.clip` over all tensors and Gaussian noise
    of std z·C is added to every entry (docs/threat-model.md); the noise's seed comes from the
    OS and is kept nowhere. An existing `out` is never overwritten.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    if out.exists():
        raise CheckpointError(f"{out}: already exists; choose another --out (nothing was written)")
    before_ck, after_ck = Checkpoint(before), Checkpoint(after)
    ticket = read_ticket(before)
    specs = _checked_specs(before_ck, after_ck, ticket, before, after)
    names = [spec.name for spec in specs]

    def diff(name: str) -> torch.Tensor:
        return after_ck.read(name).to(torch.float32) - before_ck.read(name).to(torch.float32)

    factor, std, gen, dp_stats = 1.0, 0.0, None, {}
    if dp is not None and dp.on_update:  # unit=example: the trainer did it (DP-SGD)
        entries = sum(spec.numel for spec in specs)
        norm, factor = clip_factor(
            (float(torch.linalg.vector_norm(diff(n))) for n in names), dp.clip
        )
        z = dp.z()  # from a target ε this is opacus' search: once
        std = z * dp.clip
        gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        dp_stats = {"update_norm": norm, "clip": dp.clip, "clip_factor": factor,
                    "noise_multiplier": z, "releases": dp.releases, "delta": dp.delta,
                    "epsilon": dp.spent(),
                    "noise_to_update": noise_to_update(z, dp.clip, norm, entries)}  # fmt: skip
        _warn_about_dp(z, dp_stats["noise_to_update"], entries, out)
    changed = total = 0
    with SafetensorsWriter(out, specs, delta_metadata(ticket)) as writer:
        for name in names:
            delta = diff(name)
            if not torch.isfinite(delta).all():
                raise CheckpointError(f"{after}: tensor {name!r} has NaN or Inf values")
            changed += int(torch.count_nonzero(delta))
            total += delta.numel()
            if gen is not None:
                delta.mul_(factor).add_(gaussian_noise(delta.shape, std, gen))
            writer.add(name, delta)
    if stats is not None:
        stats["changed_fraction"] = changed / max(total, 1)
        if dp_stats:
            stats["dp"] = dp_stats
    return out


def _checked_specs(before_ck, after_ck, ticket, before, after) -> list[TensorSpec]:
    """The delta's tensors (fp32, the copy's shapes), once the copy is the one its ticket
    names and the unlearned model has every tensor at the copy's shape."""
    if before_ck.sha256() != ticket.weights_sha256:
        raise CheckpointError(
            f"{before}: weights do not match the copy's ticket (edited after publication? "
            "unlearn into a separate folder and pass it as --after)"
        )
    names = before_ck.names()
    missing = [n for n in names if n not in after_ck.file_of]
    if missing:
        raise CheckpointError(f"{after}: missing tensor {missing[0]!r} ({len(missing)} in all)")
    specs = []
    for name in names:
        b, a = before_ck.spec(name), after_ck.spec(name)
        if a.shape != b.shape:
            raise CheckpointError(
                f"{after}: tensor {name!r} has shape {a.shape}, the copy has {b.shape}"
            )
        specs.append(TensorSpec(name, torch.float32, b.shape))
    return specs


def noise_to_update(z: float, clip: float, norm: float, entries: int) -> float:
    """The DP noise's expected norm (z·C·√d over d entries) over the clipped update's norm
    min(‖Δ‖, C): above 1 the returned update is more noise than update. It is at least z·√d
    whatever C is, since C scales the noise and bounds the update alike."""
    signal = min(norm, clip)
    noise = z * clip * math.sqrt(entries)
    return noise / signal if signal > 0 else math.inf


def _warn_about_dp(z: float, ratio: float, entries: int, out: Path) -> None:
    """Say plainly when the DP setting cannot leave a usable update (no silent no-op)."""
    if z == 0:
        log.warning("dp.noise_multiplier = 0: the update is clipped but not private (ε = ∞)")
    elif ratio > 1:
        log.warning(
            "%s: the DP noise is %.0f× the clipped update (z = %.2f over %d entries): the update "
            "returned is mostly noise and will undo little or nothing. No clip helps (the noise "
            "is at least z·√d times any clipped update); only a larger ε does "
            "(docs/threat-model.md)",
            out.name, ratio, z, entries,
        )  # fmt: skip
