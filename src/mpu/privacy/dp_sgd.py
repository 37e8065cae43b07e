"""Example-level DP-SGD (`dp.unit=example`): one forget item is the unit the guarantee covers.

Update-level DP (`dp.unit=update`) noises the returned update once, with the whole data set
as one unit; its noise norm z·C·√d is thousands of times any clipped update of a language
model (benchmarks/RESULTS.md), so it cannot leave a usable update. DP-SGD (Abadi et al. 2016)
spends the noise where the signal adds up instead: every step samples each forget item with
probability q (Poisson sampling), clips each sampled item's gradient to L2 norm C, sums them,
adds N(0, (z·C)² I) and divides by the expected batch q·N. The sum changes by at most C when
one item joins or leaves, whatever the data, so each step is a subsampled Gaussian mechanism
and opacus' RDP accountant composes the job's steps (`DPConfig.example_spent`).

What is protected: the forget items (with the retain item paired with each in that step: the
retain set is the model owner's own fine-tuning data). The noise's seed comes from the OS and
is kept nowhere; the sampling is seeded by the round's data order, so the m copies of a round
train on the same items, which the accounting charges for (`DPConfig.example_z`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from mpu.privacy.dp import gaussian_noise


class ExampleClipper:
    """Collects one step's per-item gradients clipped to `clip`, then releases their noised
    mean into `.grad` of `params`.

    Call `add()` after each item's backward pass (it reads and clears `.grad`), then
    `release()` once per step: `.grad` becomes (Σ clipped + N(0, (z·C)²)) / `expected_batch`.
    """

    def __init__(
        self,
        params: Sequence[torch.nn.Parameter],
        *,
        clip: float,
        noise_multiplier: float,
        expected_batch: float,
        generator: torch.Generator | None = None,
    ) -> None:
        if not (clip > 0 and math.isfinite(clip)):
            raise ValueError(f"clip={clip}: a finite number > 0")
        self.params = list(params)
        self.clip, self.z, self.expected = clip, noise_multiplier, expected_batch
        self.sums = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.gens: dict[torch.device, torch.Generator] = {}
        self._seed_gen = generator
        self.norms: list[float] = []  # this step's per-item gradient norms (before clipping)

    def add(self) -> float:
        """Clip the gradient now in `.grad` (one item's), add it to the step's sum, clear it;
        returns its norm before clipping."""
        grads = [p.grad for p in self.params]
        norm = math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads if g is not None))
        factor = min(1.0, self.clip / norm) if norm > 0 else 1.0
        for s, g in zip(self.sums, grads, strict=True):
            if g is not None:
                s.add_(g.float(), alpha=factor)
        for p in self.params:
            p.grad = None
        self.norms.append(norm)
        return norm

    def release(self) -> dict[str, float]:
        """Write the noised mean into `.grad` and start a new step; the step's statistics."""
        std = self.z * self.clip
        for p, s in zip(self.params, self.sums, strict=True):
            if std > 0:
                s.add_(gaussian_noise(s.shape, std, self._generator(s.device), s.device))
            p.grad = s.div_(self.expected).to(p.dtype)
        self.sums = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        norms, self.norms = self.norms, []
        return {
            "dp_examples": len(norms),
            "dp_clipped": sum(n > self.clip for n in norms) / len(norms) if norms else 0.0,
            "dp_item_grad_norm": sum(norms) / len(norms) if norms else 0.0,
        }

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._seed_gen is not None and device.type == "cpu":
            return self._seed_gen
        if device not in self.gens:  # seeded from the OS: nobody can replay the noise
            seed = int.from_bytes(os.urandom(8), "little") >> 1
            self.gens[device] = torch.Generator(device=device).manual_seed(seed)
        return self.gens[device]


def poisson_indices(n: int, rate: float, gen: torch.Generator) -> list[int]:
    """Each of `n` items independently with probability `rate` (the sampling the accountant
    assumes; the batch size varies from step to step, and may be 0)."""
    return torch.nonzero(torch.rand(n, generator=gen) < rate).flatten().tolist()
