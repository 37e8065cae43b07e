"""Rounds R and client epochs E per method for an MPU run (MPU.md §8).

From `get_round_epoch_pair_for_method` in Tristan0318/MPU@6ffb4c3 `scripts/mpu_tofu.sh`
and `scripts/mpu_muse.sh`: R·E = 10, the stock epoch budget. Methods the reference client
does not support (RMU, CE-U, PDU) use its fallback (1, 10).
"""

from __future__ import annotations

ROUNDS_EPOCHS: dict[str, tuple[int, int]] = {
    "SimNPO": (10, 1),
    "DPO": (10, 1),
    "SatImp": (10, 1),
    "GradAscent": (1, 10),
    "GradDiff": (1, 10),
    "UNDIAL": (1, 10),
    "NPO": (2, 5),
    "WGA": (2, 5),
}
FALLBACK: tuple[int, int] = (1, 10)


def rounds_and_epochs(method: str) -> tuple[int, int]:
    """(R, E) for `method` (any registered name or alias); unknown methods raise ConfigError."""
    from mpu.methods.registry import get_method

    return ROUNDS_EPOCHS.get(get_method(method).name, FALLBACK)
