"""mpu.methods — client unlearning losses, their configs, the registry and profiles.

Losses are plain functions `loss(model, batch, ref, hp) -> (scalar, logs)` (METHODS.md §8);
`METHODS` maps canonical names to `MethodSpec`; `get_method` is case-insensitive and knows
the aliases (IdkDPO, UnDIAL, CEU, GA).
"""

from mpu.methods.configs import (
    CEUConfig,
    DPOConfig,
    GradAscentConfig,
    GradDiffConfig,
    NPOConfig,
    RMUConfig,
    SatImpConfig,
    SimNPOConfig,
    UNDIALConfig,
    WGAConfig,
)
from mpu.methods.profiles import PROFILES, paper_hparams, training_defaults
from mpu.methods.registry import METHODS, MethodSpec, build_method_config, get_method
from mpu.methods.schedule import ROUNDS_EPOCHS, rounds_and_epochs

__all__ = [
    "METHODS",
    "PROFILES",
    "ROUNDS_EPOCHS",
    "CEUConfig",
    "DPOConfig",
    "GradAscentConfig",
    "GradDiffConfig",
    "MethodSpec",
    "NPOConfig",
    "RMUConfig",
    "SatImpConfig",
    "SimNPOConfig",
    "UNDIALConfig",
    "WGAConfig",
    "build_method_config",
    "get_method",
    "paper_hparams",
    "rounds_and_epochs",
    "training_defaults",
]
