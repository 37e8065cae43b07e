"""Emulator mode: copies whose middle is a lossy stand-in (Offsite-Tuning's idea, applied to MPU).

A published copy normally holds every block of θ, so it runs as θ does up to the noise. With
`server.emulator=layer_drop` the copy keeps the first and last `emulator_outer` blocks — the
*adapter*, which the client unlearns and the server applies — and of the middle blocks only
every `emulator_stride`-th one (or all but `emulator_drop` of them, left out evenly spaced),
renumbered into a shorter model: the *emulator*. With `emulator_distill_steps` the server
first trains the kept middle blocks towards θ on public text (`mpu.server.distill`), so that
the thinned model still works as a language model. The kept
blocks are ordinary MPU blocks (noised, reparameterized) and the emulator's are frozen: the
client trains the adapter against it, and the server maps the adapter's updates back onto
θ's outer blocks. The middle blocks the copy lacks were never sent, so no combination of the
copies holds them; the client runs a model that is worse than θ by construction.

Stride 1 keeps every block: the copies and the result are ordinary MPU's, bit for bit.

`server.emulator=base_middle` keeps every block but publishes the *public base's* middle blocks
in place of θ's: the copy holds θ only in its outer blocks and the tensors outside the blocks.
A fine-tune of a public model is a small change spread over every block, so whatever a copy
holds of θ's middle — noised, thinned or distilled from θ — a client with the base gets most of
the fine-tune back from it; a middle that is the base's own carries nothing of θ's to recover.

What is public about it is written into the copy's config.json (`mpu_emulator`): θ's block
count, which of θ's blocks the copy keeps, and which of its own blocks the client may train.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from mpu.arch import EMULATOR_CONFIG_KEY as CONFIG_KEY
from mpu.arch.base import Layout
from mpu.errors import ConfigError, UpdateRejectedError
from mpu.io.checkpoint import TensorSpec
from mpu.io.transcript import PartsLeaf

EMULATORS = ("off", "layer_drop", "base_middle")


@dataclass(frozen=True)
class Emulator:
    """Which of θ's `n_layers` blocks a copy keeps, and which of those the client trains:
    every `stride`-th middle block, or (`drop` > 0) all but `drop` evenly spaced ones; with
    `middle_from_base` the kept middle blocks are the public base's, not θ's."""

    n_layers: int
    outer: int
    stride: int
    drop: int = 0
    middle_from_base: bool = False

    def __post_init__(self) -> None:
        if self.outer < 1 or self.stride < 1:
            raise ConfigError(
                f"emulator_outer={self.outer}, emulator_stride={self.stride}: both must be ≥ 1"
            )
        if 2 * self.outer > self.n_layers:
            raise ConfigError(
                f"emulator_outer={self.outer}: the model has {self.n_layers} blocks, fewer than "
                f"the {2 * self.outer} outer blocks asked for"
            )
        middle = self.n_layers - 2 * self.outer
        if self.drop < 0 or self.drop > middle:
            raise ConfigError(
                f"emulator_drop={self.drop}: the model has {middle} middle blocks between its "
                f"{self.outer} outer blocks at each end"
            )

    @cached_property
    def left_out(self) -> list[int]:
        """θ's middle blocks the copies lack: `drop` of them spread evenly over the middle, or
        all but every `stride`-th one."""
        middle = list(range(self.outer, self.n_layers - self.outer))
        if self.drop:
            step = len(middle) / self.drop
            return [middle[int(step * i + step / 2)] for i in range(self.drop)]
        return [b for i, b in enumerate(middle) if i % self.stride]

    @cached_property
    def kept(self) -> list[int]:
        """θ's block index of each of the copy's blocks, in order."""
        gone = set(self.left_out)
        return [b for b in range(self.n_layers) if b not in gone]

    @cached_property
    def middle(self) -> list[int]:
        """The copy's own indices of the kept middle blocks (the emulator proper)."""
        return [i for i in range(len(self.kept)) if i not in set(self.trainable)]

    @property
    def drops(self) -> bool:
        """Whether any block is left out."""
        return len(self.kept) < self.n_layers

    @property
    def frozen(self) -> bool:
        """Whether the copy's middle is a stand-in the client holds frozen (blocks left out, or
        the base's); an emulator that keeps θ's every block is ordinary MPU."""
        return self.drops or self.middle_from_base

    @cached_property
    def trainable(self) -> list[int]:
        """The copy's block indices the client trains: the outer blocks (all, if nothing of the
        middle is a stand-in)."""
        n = len(self.kept)
        if not self.frozen:
            return list(range(n))
        return [*range(self.outer), *range(n - self.outer, n)]

    def copy_name(self, layout: Layout, name: str) -> str | None:
        """θ's tensor `name` as the copy stores it; None for a block the copy lacks."""
        layer = layout.block_of(name)
        if layer is None:
            return name
        if layer not in self.kept:
            return None
        prefix = layout.spec.block_module(layer) + "."
        return layout.spec.block_module(self.kept.index(layer)) + "." + name[len(prefix) :]

    def applied(self, layout: Layout, name: str) -> bool:
        """Whether the update of θ's tensor `name` is applied: outside the blocks, or in an
        outer block (the adapter)."""
        layer = layout.block_of(name)
        edge = layer is None or layer < self.outer or layer >= self.n_layers - self.outer
        return edge or not self.frozen

    def config(self, theta_config: dict) -> dict:
        """config.json updates of a copy: the shorter model, per-layer lists cut to match, and
        the public description of what it keeps."""
        if not self.frozen:
            return {}
        n = len(self.kept)
        out: dict = {"num_hidden_layers": n}
        for key, value in theta_config.items():
            if isinstance(value, list) and len(value) == self.n_layers and key != "architectures":
                out[key] = [value[i] for i in self.kept]
        out[CONFIG_KEY] = {"theta_blocks": self.n_layers, "kept_blocks": self.kept,
                           "trainable_blocks": self.trainable}  # fmt: skip
        if self.middle_from_base:
            out[CONFIG_KEY]["middle"] = "base"
        return out


def emulator_of(cfg, layout: Layout) -> Emulator | None:
    """The job's emulator for this model, or None when `server.emulator=off`."""
    if cfg.emulator == "off":
        return None
    if cfg.emulator == "base_middle":
        return Emulator(layout.geometry.n_layers, cfg.emulator_outer, 1, middle_from_base=True)
    return Emulator(layout.geometry.n_layers, cfg.emulator_outer, cfg.emulator_stride,
                    cfg.emulator_drop)  # fmt: skip


class EmulatedDelta:
    """A client's update of an emulator copy, read in θ's names: the adapter's tensors map back
    onto θ's outer blocks, and every other block of θ gets a zero update (the emulator's blocks
    are not applied; the blocks the copy lacks were never trained). Post-Process reads it like
    any delta, so the noise cancellation, the bounds and the commitments are unchanged."""

    def __init__(self, delta, emulator: Emulator, layout: Layout, theta) -> None:
        self.delta, self.path, self.ticket = delta, delta.path, delta.ticket
        self._layout, self._theta = layout, theta
        self._source: dict[str, str | None] = {}
        for name in theta.names():
            cname = emulator.copy_name(layout, name)
            self._source[name] = cname if emulator.applied(layout, name) else None
        self._check(emulator)

    def _check(self, emulator: Emulator) -> None:
        """The delta holds exactly the copy's tensors, each of θ's shape."""
        want = {emulator.copy_name(self._layout, n): n for n in self._theta.names()}
        want.pop(None, None)
        have = self.delta.specs
        missing = [c for c in want if c not in have]
        extra = [c for c in have if c not in want]
        if missing or extra:
            what = f"missing tensor {missing[0]!r}" if missing else f"unknown tensor {extra[0]!r}"
            raise UpdateRejectedError(f"{self.path}: {what} for this emulator copy")
        for cname, name in want.items():
            if tuple(have[cname].shape) != tuple(self._theta.spec(name).shape):
                raise UpdateRejectedError(
                    f"{self.path}: tensor {cname!r} has shape {tuple(have[cname].shape)}, the "
                    f"copy's is {tuple(self._theta.spec(name).shape)}"
                )

    def stored_name(self, name: str) -> str | None:
        """The update file's name for θ's tensor `name`; None where the update reads as zero
        (a block the copy lacks, or an emulator block the server does not apply)."""
        return self._source[name]

    def unread_leaves(self) -> dict[str, tuple]:
        """Commitment leaves of the file's tensors the server never reads (the emulator blocks
        the client held frozen), hashed from the file, so that the logged commitment of the
        update is the file's (`mpu verify` recomputes it from the file)."""
        read = {c for c in self._source.values() if c is not None}
        out = {}
        for cname, spec in self.delta.specs.items():
            if cname not in read:
                leaf = PartsLeaf(spec.dtype, tuple(spec.shape))
                self.delta.read(cname, leaf.update_bytes)
                out[cname] = leaf.leaf()
        return out

    @property
    def specs(self) -> dict[str, TensorSpec]:
        out = {}
        for name, cname in self._source.items():
            dtype = self.delta.specs[cname].dtype if cname is not None else torch.float32
            out[name] = TensorSpec(name, dtype, tuple(self._theta.spec(name).shape))
        return out

    def read(self, name: str, on_bytes=None) -> torch.Tensor:
        cname = self._source[name]
        if cname is None:
            return _zeros(tuple(self._theta.spec(name).shape), on_bytes)
        return self.delta.read(cname, on_bytes)

    def read_flat(self, name: str, start: int, stop: int, on_bytes=None) -> torch.Tensor:
        cname = self._source[name]
        if cname is None:
            return _zeros((stop - start,), on_bytes)
        return self.delta.read_flat(cname, start, stop, on_bytes)


def _zeros(shape: tuple[int, ...], on_bytes) -> torch.Tensor:
    """A zero update, its bytes passed to `on_bytes` as a reader would (the commitment's leaf)."""
    out = torch.zeros(shape, dtype=torch.float32)
    if on_bytes is not None and out.numel():
        on_bytes(memoryview(out.reshape(-1).view(torch.uint8).numpy()))
    return out
