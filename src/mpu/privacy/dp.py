"""Differential privacy for the returned updates: clip, add Gaussian noise, account with opacus.

Two units of protection (`dp.unit`):

- **update** (the default): the whole update is the unit, described below.
- **example**: DP-SGD on the client (`mpu/privacy/dp_sgd.py`): each forget item is the unit,
  every step's per-item gradients are clipped and noised, and the update inherits the guarantee.

Each update Δ'_k the client returns is one release of a Gaussian mechanism over its whole data
(the forget and retain rows together are the unit protected): the update is clipped to L2 norm
C over all its tensors, then N(0, (z·C)² I) is added. A round releases m such updates and a job
R rounds, so the privacy loss composes over R·m releases of noise multiplier z; ε for a given δ
comes from opacus' Rényi-DP accountant (sample rate 1: every release sees all the data), never
from a formula of ours. A target (ε, δ) is turned into z with opacus' `get_noise_multiplier`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from mpu.config import check_number, field
from mpu.errors import ConfigError


def rdp_orders() -> list[float]:
    """opacus' default Rényi orders (up to 63) and larger ones: at large ε or few releases the
    best order is past 63, and RDP holds at every order, so more orders only tighten ε."""
    from opacus.accountants import RDPAccountant

    return [*RDPAccountant.DEFAULT_ALPHAS, 80, 96, 128, 192, 256, 384, 512, 768, 1024]


def epsilon(
    noise_multiplier: float, releases: int, delta: float, sample_rate: float = 1.0
) -> float:
    """ε of `releases` Gaussian releases of noise multiplier z, each seeing every unit with
    probability `sample_rate` (Poisson sampling; 1: all the data), at `delta` (opacus RDP)."""
    from opacus.accountants import RDPAccountant

    if noise_multiplier == 0:  # clipping alone: no privacy at all
        return math.inf
    acc = RDPAccountant()
    acc.history = [(noise_multiplier, sample_rate, releases)]
    return float(acc.get_epsilon(delta, alphas=rdp_orders()))


def noise_for(
    target_epsilon: float, releases: int, delta: float, sample_rate: float = 1.0
) -> float:
    """The noise multiplier z that gives (target ε, δ) over `releases` (opacus)."""
    from opacus.accountants.utils import get_noise_multiplier

    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ConfigError(f"dp_epsilon={target_epsilon}: expected a finite number > 0")
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                      sample_rate=sample_rate, steps=releases,
                                      accountant="rdp", alphas=rdp_orders()))  # fmt: skip


def clip_factor(norms: Iterable[float], clip: float) -> tuple[float, float]:
    """(total L2 norm, the factor min(1, C/‖Δ‖) that clips it to `clip`)."""
    total = math.sqrt(sum(n * n for n in norms))
    return total, (1.0 if total <= clip else clip / total)


def gaussian_noise(
    shape: torch.Size, std: float, gen: torch.Generator, device: torch.device | None = None
) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32, device=device).mul_(std)


@dataclass
class DPConfig:
    """Differentially private updates (off unless `clip` is set)."""

    clip: float | None = field(
        None, help="L2 norm C every returned update is clipped to (unset: no DP)"
    )
    noise_multiplier: float | None = field(
        None, help="z: Gaussian noise of std z·C per entry (or give epsilon)"
    )
    epsilon: float | None = field(None, help="target ε over all releases; sets z (opacus RDP)")
    delta: float = field(1e-5, help="δ of the (ε, δ) guarantee")
    releases: int = field(
        1, help="updates released in the job: R rounds × m copies (mpu run sets it)"
    )
    unit: str = field(
        "update", help="what one guarantee covers: update (the whole returned update) | "
        "example (one forget item: DP-SGD with per-item clipping on every step)"
    )  # fmt: skip
    copies: int = field(
        1, help="unit=example: copies a round trains on the same sampled items (m; mpu run sets "
        "it): their noises count as one release of noise z/√m"
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_number(self, "clip", self.clip, low=0, low_open=True)
        check_number(self, "noise_multiplier", self.noise_multiplier, low=0)
        check_number(self, "epsilon", self.epsilon, low=0, low_open=True)
        check_number(
            self,
            "delta",
            self.delta,
            low=0,
            high=1,
            low_open=True,
            high_open=True,
            allow_none=False,
        )
        check_number(self, "releases", self.releases, low=1, allow_none=False)
        check_number(self, "copies", self.copies, low=1, allow_none=False)
        if self.unit not in ("update", "example"):
            raise ConfigError(f"dp.unit={self.unit!r}: expected 'update' or 'example'")
        if self.clip is not None and self.noise_multiplier is None and self.epsilon is None:
            raise ConfigError("dp.clip is set: give dp.noise_multiplier or a target dp.epsilon")
        if self.noise_multiplier is not None and self.epsilon is not None:
            raise ConfigError("give dp.noise_multiplier or dp.epsilon, not both")

    @property
    def enabled(self) -> bool:
        return self.clip is not None

    @property
    def on_update(self) -> bool:
        """Whether the returned update itself is clipped and noised (unit=update)."""
        return self.enabled and self.unit == "update"

    @property
    def on_examples(self) -> bool:
        """Whether the client trains with DP-SGD (unit=example)."""
        return self.enabled and self.unit == "example"

    def z(self) -> float:
        """The noise multiplier (from the target ε when one is given)."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        return noise_for(self.epsilon, self.releases, self.delta)

    def spent(self) -> float:
        """ε over `releases` at `delta` for the noise actually added (opacus)."""
        return epsilon(self.z(), self.releases, self.delta)

    def example_z(self, sample_rate: float, steps: int) -> float:
        """unit=example: the noise multiplier each copy adds at each of the job's `steps`.

        The m copies of a round train on the same sampled items with independent noise, so at
        one step they release one item's clipped gradient m times: a Gaussian mechanism of
        sensitivity √m·C under noise z·C per copy, that is noise multiplier z/√m. A target ε
        is met by z = √m · (opacus' multiplier for `steps` releases at `sample_rate`)."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        return math.sqrt(self.copies) * noise_for(self.epsilon, steps, self.delta, sample_rate)

    def example_spent(self, sample_rate: float, steps: int, z: float | None = None) -> float:
        """unit=example: ε of the whole job at `delta` (opacus RDP, Poisson sampling); `z`, when
        the caller already has `example_z`, spares opacus' search a second run."""
        z = self.example_z(sample_rate, steps) if z is None else z
        return epsilon(z / math.sqrt(self.copies), steps, self.delta, sample_rate)
