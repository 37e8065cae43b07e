"""One typed hyperparameter config per unlearning method (METHODS.md §5).

Defaults are the *effective* OpenUnlearning values at locuslab/open-unlearning@d3d7cf9, i.e.
`configs/trainer/<Method>.yaml` composed with `experiment=unlearn/tofu/default` (tofu/idk
for DPO); where the bare trainer class default differs, the field help says so. The
`paper` profile (values the MPU reference client ran, Tristan0318/MPU@6ffb4c3
`pum.py::client_unlearn`) overrides a few of them: see `mpu.methods.profiles`.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpu.config import field
from mpu.errors import ConfigError

RETAIN_LOSS_TYPES = ("NLL", "KL")


def _positive(cls: object, name: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        rel = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{type(cls).__name__}.{name}={value}: must be {rel}")


@dataclass
class GradAscentConfig:
    """Gradient ascent: L = −CE(forget). No hyperparameters, no retain term."""

    def __post_init__(self) -> None:
        pass


@dataclass
class GradDiffConfig:
    """Gradient difference: L = γ·(−CE(forget)) + α·L_r (OpenUnlearning `GradDiff.yaml`)."""

    gamma: float = field(1.0, help="weight γ of the forget loss")
    alpha: float = field(1.0, help="weight α of the retain loss (not MPU's noise scale α_k)")
    retain_loss_type: str = field(
        "NLL", help="retain loss: NLL (CE on the retain batch) or KL (to the reference model)"
    )

    def __post_init__(self) -> None:
        _positive(self, "gamma", self.gamma, allow_zero=True)
        _positive(self, "alpha", self.alpha, allow_zero=True)
        if self.retain_loss_type not in RETAIN_LOSS_TYPES:
            raise ConfigError(
                f"{type(self).__name__}.retain_loss_type={self.retain_loss_type!r}: "
                f"choose one of {', '.join(RETAIN_LOSS_TYPES)}"
            )


@dataclass
class NPOConfig(GradDiffConfig):
    """Negative preference optimization (Zhang et al. 2024, arXiv 2404.05868)."""

    beta: float = field(
        0.1, help="inverse temperature β (NPO.yaml and the MPU client: 0.1; class default 1.0)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "beta", self.beta)


@dataclass
class SimNPOConfig(GradDiffConfig):
    """Reference-free NPO with length normalisation (Fan et al. 2024, arXiv 2410.07163)."""

    beta: float = field(4.5, help="inverse temperature β (SimNPO.yaml; class default 1.0)")
    delta: float = field(0.0, help="margin δ, inside the β product (paper margin = β·δ)")
    gamma: float = field(0.125, help="forget weight γ (SimNPO.yaml 0.125; the MPU client ran 1.0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "beta", self.beta)


@dataclass
class DPOConfig(GradDiffConfig):
    """IdkDPO: DPO with a refusal as the preferred answer (Rafailov et al. 2023; TOFU idk)."""

    beta: float = field(0.1, help="inverse temperature β (DPO.yaml: 0.1; class default 1.0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "beta", self.beta)


@dataclass
class UNDIALConfig(GradDiffConfig):
    """Self-distillation with adjusted logits (Dong et al. 2024, arXiv 2402.10052)."""

    beta: float = field(10.0, help="logit penalty β on the target token (UNDIAL.yaml: 10)")
    alpha: float = field(0.0, help="retain weight α (UNDIAL.yaml 0.0; the MPU client ran 1.0)")
    undial_mask: str = field(
        "all",
        help="positions averaged: 'all' B·(T−1) shifted positions (OpenUnlearning) or "
        "'answer' positions only (MPU client)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "beta", self.beta, allow_zero=True)
        if self.undial_mask not in ("all", "answer"):
            raise ConfigError(f"UNDIALConfig.undial_mask={self.undial_mask!r}: 'all' or 'answer'")


@dataclass
class SatImpConfig(GradDiffConfig):
    """Saturation-importance token weighting (Yang et al. 2025, arXiv 2505.11953)."""

    beta1: float = field(5.0, help="exponent on p (saturation), SatImp.yaml: 5")
    beta2: float = field(1.0, help="exponent on 1−p (importance), SatImp.yaml: 1")
    gamma: float = field(0.1, help="forget weight γ (SatImp.yaml 0.1; the MPU client ran 1.0)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "beta1", self.beta1, allow_zero=True)
        _positive(self, "beta2", self.beta2, allow_zero=True)


@dataclass
class WGAConfig(GradDiffConfig):
    """Weighted gradient ascent, w = p^β (Wang et al. 2025, arXiv 2502.19301)."""

    beta: float = field(1.0, help="exponent β of the token weight p^β (WGA.yaml: 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "beta", self.beta, allow_zero=True)


@dataclass
class RMUConfig:
    """Representation misdirection (Li et al. 2024, WMDP, arXiv 2403.03218)."""

    gamma: float = field(1.0, help="weight γ of the forget (steering) loss")
    alpha: float = field(1.0, help="weight α of the retain (EMBED_DIFF) loss")
    steering_coeff: float = field(
        2.0, help="norm s of the steering vector (RMU.yaml: 2; class default 20)"
    )
    module_regex: str = field(
        r"model\.layers\.7",
        help="full-match regex naming the ONE module whose output hidden state is steered",
    )
    steering_seed: int = field(
        0, help="seed of the steering direction u ~ U[0,1)^d (ours: explicit, recorded)"
    )
    retain_loss_type: str = field("EMBED_DIFF", help="RMU's retain loss; only EMBED_DIFF")

    def __post_init__(self) -> None:
        _positive(self, "gamma", self.gamma, allow_zero=True)
        _positive(self, "alpha", self.alpha, allow_zero=True)
        _positive(self, "steering_coeff", self.steering_coeff)
        if self.retain_loss_type != "EMBED_DIFF":
            raise ConfigError(
                f"RMUConfig.retain_loss_type={self.retain_loss_type!r}: RMU supports EMBED_DIFF only"
            )


@dataclass
class CEUConfig:
    """Cross-entropy unlearning (CE-U, Yang et al. 2025, arXiv 2503.01224). Forget set only."""

    ignore_first_n_answer_tokens: int = field(
        1, help="answer tokens skipped at the start of each answer (CE-U community default 1)"
    )

    def __post_init__(self) -> None:
        if self.ignore_first_n_answer_tokens < 0:
            raise ConfigError(
                f"CEUConfig.ignore_first_n_answer_tokens={self.ignore_first_n_answer_tokens}: >= 0"
            )
