"""The server job's configuration: the protocol knobs of docs/protocol.md §2–8, validated up front (B23)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mpu.config import check_number, field
from mpu.devices import check_device_name
from mpu.errors import ConfigError

NOISE_SCOPES = ("blocks", "all")
SIGMA_GRANULARITIES = ("block", "tensor")
SEED_SOURCES = ("secret", "paper_public")
PUBLISH_DTYPES = ("checkpoint", "float32", "bfloat16", "float16")


@dataclass
class JobConfig:
    """Protocol settings of one server job (defaults: the paper's profile with our fixes)."""

    copies: int = field(
        2, help="m, perturbed copies per round (m = 1 is the single-noisy-copy baseline)"
    )
    kappa: float = field(0.01, help="κ, relative noise level: σ_l = κ·RMS(θ_r − θ_base) per block")
    alphas: str = field(
        "linspace",
        help="noise scales α: 'linspace' (1..2, the paper's), 'random' (secret, per round) or 'a,b,..'",
    )
    alpha_min: float = field(1.0, help="lower bound of secret random α")
    alpha_max: float = field(2.0, help="upper bound of secret random α")
    server_lr: float = field(1.0, help="η, server step size: θ_{r+1} = θ_r + η·Δ̄_r")
    noise_scope: str = field(
        "blocks",
        help="'blocks' (decoder blocks, the paper's) or 'all' (also the embeddings, the final norm and the LM head)",
    )
    sigma_granularity: str = field(
        "block", help="'block' (σ pooled per block, the paper's) or 'tensor'"
    )
    reparameterize: bool = field(True, help="apply the function-preserving reparameterization T")
    angles: str = field(
        "continuous",
        help="'continuous' RoPE-plane angles or 'quarter_turn' (Adam-equivariant signed permutations)",
    )
    vo_map: str = field(
        "haar", help="V/O map: 'haar' (ours) or 'same_as_qk' (the reference's C_j = A_j)"
    )
    seeds: str = field(
        "secret",
        help="'secret' (CSPRNG key) or 'paper_public' (reference seeds; anyone can strip the noise)",
    )
    publish_dtype: str = field(
        "checkpoint",
        help="dtype of published copies: 'checkpoint', 'float32', 'bfloat16', 'float16'",
    )
    max_update_norm: float = field(
        0.0, help="reject an update whose L2 norm exceeds this (0: no absolute bound)"
    )
    max_update_ratio: float = field(
        1.0,
        help="reject an update whose change to a tensor has a larger L2 norm than this × that "
        "tensor's norm in θ (unlearning moves weights by a small fraction; 0: no bound, the "
        "behaviour before this check)",
    )
    median_factor: float = field(
        10.0, help="reject an update whose norm exceeds this factor × the median over copies"
    )
    min_changed_fraction: float = field(
        0.5, help="warn when the cast to the publication dtype erases noise on more than 1 − this"
    )
    gate: bool = field(
        True, help="check function preservation of T on the real model at init (κ = 0, fp32 logits)"
    )
    gate_blocks: int = field(
        2,
        help="leading blocks the gate runs (raised to cover every layer type the config names); "
        "0 = the whole model",
    )
    device: str = field(
        "cpu", help="where noise, maps and inverses are computed: cpu | auto | cuda | cuda:N"
    )
    aggregation: str = field(
        "harmonic",
        help="harmonic (w_k ∝ 1/α_k: cancels the noise to first order) | uniform (w_k = 1/m: "
        "the ablation, which leaves Σ α_k ε_k / m)",
    )
    residual: float = field(
        0.0,
        help="ρ: noise ξ shared by every copy, RMS ρ·σ (copies are T_k(θ + ξ + α_k ε_k)); bounds "
        "how close any combination of the copies gets to θ, at a first-order utility cost "
        "(docs/threat-model.md)",
    )

    def __post_init__(self) -> None:
        check_number(self, "copies", self.copies, low=1, high=64, allow_none=False)
        # κ ≥ 10 makes the noise ten times the whole fine-tuning delta: not a privacy setting
        # anyone means, and 1e300 overflows the noise to Inf
        check_number(self, "kappa", self.kappa, low=0, high=10, allow_none=False)
        check_number(self, "server_lr", self.server_lr, low=0, low_open=True, allow_none=False)
        check_number(self, "alpha_min", self.alpha_min, low=0, low_open=True, allow_none=False)
        check_number(self, "alpha_max", self.alpha_max, low=0, low_open=True, allow_none=False)
        check_number(self, "max_update_norm", self.max_update_norm, low=0, allow_none=False)
        check_number(self, "max_update_ratio", self.max_update_ratio, low=0, allow_none=False)
        check_number(self, "residual", self.residual, low=0, high=100, allow_none=False)
        if (
            isinstance(self.gate_blocks, bool)
            or not isinstance(self.gate_blocks, int)
            or self.gate_blocks < 0
        ):
            raise ConfigError(f"gate_blocks must be an integer ≥ 0, got {self.gate_blocks!r}")
        check_device_name(self.device)
        check_number(
            self, "median_factor", self.median_factor, low=1, low_open=True, allow_none=False
        )
        check_number(
            self, "min_changed_fraction", self.min_changed_fraction, low=0, high=1, allow_none=False
        )
        for name, value, allowed in (
            ("noise_scope", self.noise_scope, NOISE_SCOPES),
            ("sigma_granularity", self.sigma_granularity, SIGMA_GRANULARITIES),
            ("seeds", self.seeds, SEED_SOURCES),
            ("publish_dtype", self.publish_dtype, PUBLISH_DTYPES),
            ("angles", self.angles, ("continuous", "quarter_turn")),
            ("vo_map", self.vo_map, ("haar", "same_as_qk")),
        ):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
        if self.aggregation not in ("harmonic", "uniform"):
            raise ConfigError(f"aggregation={self.aggregation!r}: expected harmonic or uniform")
        if self.alphas not in ("linspace", "random"):
            try:
                values = [float(a) for a in self.alphas.split(",")]
            except ValueError:
                raise ConfigError(
                    f"alphas must be 'linspace', 'random' or numbers 'a,b,..', got {self.alphas!r}"
                ) from None
            if len(values) != self.copies or not all(math.isfinite(a) and a > 0 for a in values):
                raise ConfigError(
                    f"alphas {self.alphas!r}: need {self.copies} positive values (one per copy)"
                )
        if not 0 < self.alpha_min <= self.alpha_max:
            raise ConfigError(
                f"need 0 < alpha_min ≤ alpha_max, got {self.alpha_min}, {self.alpha_max}"
            )
