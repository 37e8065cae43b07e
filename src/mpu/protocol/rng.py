"""Random streams derived from one secret, so the server can regenerate any draw on demand.

Every draw (the noise of a tensor for copy j, the transform of block l of copy k) gets its
own CPU generator seeded with the first 8 bytes of HMAC-SHA256(master key, canonical JSON of
its coordinates) (docs/protocol.md §3). Nobody without the key can regenerate a draw; the reference
implementation used public seeds (B2), which `PaperStreams` reproduces for comparison only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

import torch

KEY_BYTES = 32


def new_master_key() -> bytes:
    """A fresh 256-bit secret from the OS CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def _canonical(parts: tuple) -> bytes:
    return json.dumps(list(parts), separators=(",", ":"), ensure_ascii=True).encode()


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


class SecretStreams:
    """Keyed streams: seed = first 8 bytes of HMAC-SHA256(key, [round, purpose, ...])."""

    def __init__(self, key: bytes):
        if len(key) != KEY_BYTES:
            raise ValueError("master key must be 32 bytes")
        self._key = key

    def seed(self, *parts: object) -> int:
        digest = hmac.new(self._key, _canonical(parts), hashlib.sha256).digest()
        return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)

    def noise(self, round_: int, name: str, j: int) -> torch.Generator:
        return _generator(self.seed(round_, "noise", name, j))

    def transform(self, round_: int, k: int, layer: int) -> torch.Generator:
        return _generator(self.seed(round_, "T", k, layer))

    def residual(self, name: str) -> torch.Generator:
        """The residual noise ξ of a tensor: one draw for the whole job (every copy, round)."""
        return _generator(self.seed("residual", name))

    def __repr__(self) -> str:  # never print the key
        return "SecretStreams(<key hidden>)"


class PaperStreams:
    """The reference implementation's public seeds (seed 101000+r / 202000+r, SHA-256 sub-seeds).

    Anyone can regenerate these draws and strip the noise from one copy (docs/protocol.md §10 B2): use only
    to reproduce the paper's numbers, never to protect a model.
    """

    def seed(self, *parts: object) -> int:
        digest = hashlib.sha256(_canonical(parts)).digest()
        return int.from_bytes(digest[:8], "big") % (1 << 63)

    def noise(self, round_: int, name: str, j: int) -> torch.Generator:
        return _generator(self.seed(101000 + round_, "noise", name, j))

    def transform(self, round_: int, k: int, layer: int) -> torch.Generator:
        return _generator(self.seed(202000 + round_, "T", k, layer))

    def residual(self, name: str) -> torch.Generator:
        return _generator(self.seed(303000, "residual", name))
