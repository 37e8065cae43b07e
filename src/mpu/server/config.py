"""The server job's configuration: the protocol knobs of docs/protocol.md §2–8, validated up front (B23)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

from mpu.config import check_number, field
from mpu.devices import check_device_name
from mpu.errors import ConfigError
from mpu.protocol.aggregate import (
    AGGREGATIONS,
    MAX_AMPLIFICATION,
    aggregation_weights,
    amplification,
)
from mpu.protocol.noise import (
    default_alphas,
    extrapolation_alphas,
    line_nodes,
    validate_alphas,
)

NOISE_SCOPES = ("blocks", "all")
SIGMA_GRANULARITIES = ("block", "tensor")
SEED_SOURCES = ("secret", "paper_public")
PUBLISH_DTYPES = ("checkpoint", "float32", "bfloat16", "float16")


@dataclass
class JobConfig:
    """Protocol settings of one server job. Defaults: four copies on one noise line,
    extrapolated to zero noise, with Adam-equivariant maps (docs/protocol.md §9); the paper's
    profile is `copies=2 aggregation=harmonic angles=continuous`."""

    copies: int = field(
        4,
        help="m, perturbed copies per round (m = 1 is the single-noisy-copy baseline; "
        "extrapolation cancels the noise's effect up to order m − 1: 3 removes the "
        "second-order bias, 4 (nodes ±1, ±2) also every odd order)",
    )
    kappa: float = field(0.01, help="κ, relative noise level: σ_l = κ·RMS(θ_r − θ_base) per block")
    lines: int = field(
        1,
        help="extrapolate: independent noise lines the copies are split over (copies / lines "
        "per line, each line extrapolated alone, the lines averaged: the variance a line cannot "
        "cancel falls by this factor; copies=4 lines=2 is two antithetic pairs)",
    )
    alphas: str = field(
        "auto",
        help="noise scales α: 'auto' (extrapolate: nodes ±1, ±2, …; harmonic/uniform: "
        "linspace), 'linspace' (1..2, the paper's), 'random' (secret, per round) or 'a,b,..'",
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
        "quarter_turn",
        help="'quarter_turn' (signed permutations: AdamW and clipping commute with them, so "
        "every copy's client follows the same path) or 'continuous' RoPE-plane angles (the "
        "paper's; AdamW then drifts per copy)",
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
        "extrapolate",
        help="extrapolate (copies on one noise line, Lagrange weights at zero noise: cancels "
        "every order below m) | harmonic (the paper's, w_k ∝ 1/α_k on zero-sum noise: first "
        "order only) | uniform (w_k = 1/m: the ablation, which leaves Σ α_k ε_k / m)",
    )
    residual: float = field(
        0.0,
        help="ρ: noise ξ shared by every copy, RMS ρ·σ (copies are T_k(θ + ξ + α_k ε_k)); bounds "
        "how close any combination of the copies gets to θ, at a first-order utility cost "
        "(docs/threat-model.md)",
    )
    emulator: str = field(
        "off",
        help="'off' (every copy holds every block), 'layer_drop': copies keep the first and "
        "last emulator_outer blocks (the client trains these) and every emulator_stride-th "
        "middle block (frozen); the blocks in between are never sent; or 'base_middle': copies "
        "hold θ's outer blocks and the public base's middle blocks (frozen), so θ's middle is "
        "never sent (docs/threat-model.md)",
    )
    emulator_outer: int = field(2, help="emulator: blocks kept and trained at each end")
    emulator_stride: int = field(2, help="emulator: keep every n-th middle block (1 keeps all)")
    emulator_drop: int = field(
        0, help="emulator: leave out this many middle blocks, evenly spaced, instead of the stride"
    )
    emulator_distill_steps: int = field(
        0,
        help="emulator: before round 1, train the kept middle blocks towards θ for this many "
        "steps on public text sampled from the base (0: publish them as θ's; docs/threat-model.md)",
    )
    emulator_distill_texts: int = field(256, help="emulator distillation: public sequences")
    emulator_distill_length: int = field(64, help="emulator distillation: tokens per sequence")
    emulator_distill_lr: float = field(1e-4, help="emulator distillation: AdamW learning rate")
    emulator_distilled_from: str = field(
        "",
        help="emulator: the workdir of an earlier job on the same θ and emulator whose distilled "
        "middle is reused instead of distilling again",
    )

    def _check_emulator(self) -> None:
        for name, low in (("emulator_outer", 1), ("emulator_stride", 1), ("emulator_drop", 0),
                          ("emulator_distill_steps", 0), ("emulator_distill_texts", 1),
                          ("emulator_distill_length", 2)):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer ≥ {low}, got {value!r}")
        check_number(self, "emulator_distill_lr", self.emulator_distill_lr, low=0, low_open=True,
                     allow_none=False)  # fmt: skip
        if self.emulator_drop and self.emulator_stride != 2:
            raise ConfigError(
                f"emulator_drop={self.emulator_drop} and emulator_stride={self.emulator_stride}: "
                "set one of them (emulator_drop replaces the stride)"
            )
        if (self.emulator_distill_steps or self.emulator_distilled_from) and self.emulator == "off":
            raise ConfigError(
                "emulator_distill_steps is set but emulator=off: there is no emulator to distil"
            )
        if self.emulator == "base_middle" and (
            self.emulator_drop or self.emulator_distill_steps or self.emulator_distilled_from
        ):
            raise ConfigError(
                "emulator=base_middle keeps every block and publishes the base's middle as it is: "
                "emulator_drop and emulator distillation (which trains the middle towards θ) do "
                "not apply"
            )

    def __post_init__(self) -> None:
        check_number(self, "copies", self.copies, low=1, high=64, allow_none=False)
        # bounded by MAX_NOISE, not lower: on a pre-trained model a copy at κ = 10 (noise ten
        # times the fine-tuning delta per tensor) still computes 98 % of what θ memorised
        # (SmolLM2, benchmarks/RESULTS.md), so the settings that might protect lie above it;
        # 1e300 would overflow the noise to Inf
        check_number(self, "kappa", self.kappa, low=0, high=MAX_NOISE, allow_none=False)
        # η > 10 overshoots the aggregated update tenfold: a typo, not a step size
        check_number(self, "server_lr", self.server_lr, low=0, high=10, low_open=True,
                     allow_none=False)  # fmt: skip
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
        self._check_emulator()
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
            ("emulator", self.emulator, ("off", "layer_drop", "base_middle")),
        ):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(
                f"aggregation={self.aggregation!r}: expected one of {', '.join(AGGREGATIONS)}"
            )
        self._check_lines()
        if self.alphas not in ("auto", "linspace", "random"):
            try:
                values = [float(a) for a in self.alphas.split(",")]
            except ValueError:
                raise ConfigError(
                    "alphas must be 'auto', 'linspace', 'random' or numbers 'a,b,..', got "
                    f"{self.alphas!r}"
                ) from None
            if len(values) != self.copies or not all(math.isfinite(a) and a > 0 for a in values):
                raise ConfigError(
                    f"alphas {self.alphas!r}: need {self.copies} positive values (one per copy)"
                )
            self.check_weights(values, f"alphas={self.alphas}")
        if not 0 < self.alpha_min <= self.alpha_max:
            raise ConfigError(
                f"need 0 < alpha_min ≤ alpha_max, got {self.alpha_min}, {self.alpha_max}"
            )
        top = alpha_range(self)[1]
        if top * self.kappa > MAX_NOISE:
            raise ConfigError(
                f"alphas={self.alphas} with kappa={self.kappa:g}: the largest α·κ is "
                f"{top * self.kappa:.3g} (> {MAX_NOISE:g}): that copy's noise would be more than "
                f"{MAX_NOISE:g}× what fine-tuning changed"
            )
        if self.alphas == "random" and self.aggregation == "extrapolate":
            draw_alphas(self)  # a range with no usable draw is refused now, not at publish

    @property
    def noise_design(self) -> str:
        """'line' for extrapolation (one noise direction, copies at ±α_k), else the paper's
        'zero_sum' (docs/protocol.md §3)."""
        return "line" if self.aggregation == "extrapolate" else "zero_sum"

    def weights(self, alphas: list[float]) -> list[float]:
        """The aggregation weight of each copy k given the round's α (Σ w_k = 1)."""
        if self.aggregation != "extrapolate":
            return aggregation_weights(self.aggregation, alphas)
        nodes = line_nodes(alphas, self.lines)
        return aggregation_weights(self.aggregation, alphas, nodes, self.lines)

    def _check_lines(self) -> None:
        """L lines need extrapolation and at least two copies on each (one copy per line
        averages noisy copies and cancels nothing)."""
        if self.lines == 1:
            return
        if self.lines < 1:
            raise ConfigError(f"lines={self.lines}: expected a whole number ≥ 1")
        if self.aggregation != "extrapolate":
            raise ConfigError(f"lines={self.lines} needs aggregation=extrapolate (the line design)")
        if self.copies % self.lines or self.copies // self.lines < 2:
            raise ConfigError(
                f"lines={self.lines} with copies={self.copies}: every noise line needs the same "
                "number of copies, at least two (e.g. copies=4 lines=2)"
            )

    def check_weights(self, alphas: list[float], what: str) -> list[float]:
        """The weights of `alphas`, refused when extrapolation cannot use them: two copies at
        the same node, or nodes so close that Σ|w_k| > MAX_AMPLIFICATION (the copies' own
        errors would be multiplied by it)."""
        try:
            weights = self.weights(alphas)
        except ValueError as exc:
            raise ConfigError(f"{what}: {exc}") from None
        if amplification(weights) > MAX_AMPLIFICATION:
            raise ConfigError(
                f"{what}: extrapolation weights {[round(w, 3) for w in weights]} sum to "
                f"{amplification(weights):.3g} in absolute value (> {MAX_AMPLIFICATION:g}): the "
                "copies' nodes ±α are too close; spread them apart"
            )
        return weights


MAX_NOISE = 100.0  # largest α·κ: a copy's noise 100× what fine-tuning changed


def alpha_range(cfg: JobConfig) -> tuple[float, float]:
    """The smallest and largest α any round of this job can use."""
    if cfg.alphas == "random":
        return cfg.alpha_min, cfg.alpha_max
    if cfg.alphas in ("auto", "linspace"):
        auto = cfg.alphas == "auto" and cfg.aggregation == "extrapolate"
        values = extrapolation_alphas(cfg.copies, cfg.lines) if auto else default_alphas(cfg.copies)
    else:
        values = [float(a) for a in cfg.alphas.split(",")]
    return min(values), max(values)


def draw_alphas(cfg: JobConfig) -> list[float]:
    """One round's α from the settings. Secret random α under extrapolation are drawn again
    (from the CSPRNG) until the nodes are far enough apart for the weights: the accepted draws
    are uniform on the usable set."""
    m, setting = cfg.copies, cfg.alphas
    if setting == "auto":
        if cfg.aggregation == "extrapolate":
            return extrapolation_alphas(m, cfg.lines)
        return default_alphas(m)
    if setting == "linspace":
        return default_alphas(m)
    if setting != "random":
        return validate_alphas([float(a) for a in setting.split(",")], m)
    rng = secrets.SystemRandom()
    for _ in range(1000):
        alphas = [rng.uniform(cfg.alpha_min, cfg.alpha_max) for _ in range(m)]
        if amplification(cfg.weights(alphas)) <= MAX_AMPLIFICATION:
            return alphas
    raise ConfigError(
        f"alphas=random: no draw in [{cfg.alpha_min:g}, {cfg.alpha_max:g}] gave {m} "
        "extrapolation nodes far enough apart; widen alpha_min..alpha_max"
    )
