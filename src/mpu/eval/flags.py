"""Compatibility flags: OpenUnlearning's behaviour by default, documented fixes opt-in (docs/metrics.md)."""

from __future__ import annotations

from dataclasses import dataclass

from mpu.config import field
from mpu.errors import ConfigError


@dataclass(frozen=True)
class EvalFlags:
    """Switches between OpenUnlearning's exact semantics (default) and corrected variants.

    Defaults reproduce the numbers of OpenUnlearning's reference logs, so a retain-model log
    produced upstream can be compared with ours.
    """

    attention_mask: str = field(
        "pad_id",
        help="'pad_id': mask = ids != pad id (upstream, masks in-prompt EOS when pad = EOS); "
        "'padding': mask padding positions only",
    )
    es_floor: bool = field(
        True,
        help="extraction strength: k* falls back to n-1 when no suffix matches (upstream, "
        "ES >= 1/n); False: k* = n so ES may be 0",
    )
    truth_ratio_aggregator: str = field(
        "default",
        help="'default': closer_to_1_better (forget) / true_better (others); 'prob_mean': "
        "p_correct / (p_correct + p_wrong)",
    )
    logits_dtype: str = field("float32", help="logits are always cast to fp32 (upstream)")
    engine: str = field(
        "fast",
        help="'fast': continuous-batching generation and logits only where a label needs them; "
        "'reference': model.generate on fixed batches and full logits (same texts and scores, "
        "slower; what the fast path is checked against)",
    )

    def __post_init__(self) -> None:
        if self.attention_mask not in ("pad_id", "padding"):
            raise ConfigError(
                f"eval flag attention_mask must be 'pad_id' or 'padding', not {self.attention_mask!r}"
            )
        if self.truth_ratio_aggregator not in ("default", "prob_mean"):
            raise ConfigError(
                "eval flag truth_ratio_aggregator must be 'default' or 'prob_mean', "
                f"not {self.truth_ratio_aggregator!r}"
            )
        if self.engine not in ("fast", "reference"):
            raise ConfigError(
                f"eval flag engine must be 'fast' or 'reference', not {self.engine!r}"
            )
        if self.logits_dtype != "float32":
            raise ConfigError(
                f"eval flag logits_dtype must be 'float32' (bf16 logits break Min-K++), "
                f"not {self.logits_dtype!r}"
            )
