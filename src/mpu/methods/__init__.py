"""mpu.methods — client unlearning methods, one module each, and the training profiles.

Every module declares `METHOD = Method(...)` with its config dataclass, its loss
`loss(model, batch, ref, hp) -> (scalar, logs)`, the inputs it needs, its MPU (R, E) schedule
and its paper-profile overrides (docs/methods.md); `METHODS` maps canonical names to them and
`get_method` is case-insensitive and knows the aliases (IdkDPO, UnDIAL, CEU, GA).
"""

from mpu.methods.base import Method
from mpu.methods.ceu import CEUConfig
from mpu.methods.dpo import DPOConfig
from mpu.methods.grad_ascent import GradAscentConfig
from mpu.methods.grad_diff import GradDiffConfig
from mpu.methods.npo import NPOConfig
from mpu.methods.profiles import PROFILES, training_defaults
from mpu.methods.registry import METHODS, build_method_config, get_method, rounds_and_epochs
from mpu.methods.rmu import RMUConfig
from mpu.methods.satimp import SatImpConfig
from mpu.methods.simnpo import SimNPOConfig
from mpu.methods.undial import UNDIALConfig
from mpu.methods.wga import WGAConfig

__all__ = [
    "METHODS",
    "PROFILES",
    "CEUConfig",
    "DPOConfig",
    "GradAscentConfig",
    "GradDiffConfig",
    "Method",
    "NPOConfig",
    "RMUConfig",
    "SatImpConfig",
    "SimNPOConfig",
    "UNDIALConfig",
    "WGAConfig",
    "build_method_config",
    "get_method",
    "rounds_and_epochs",
    "training_defaults",
]
