"""`EvalConfig`: the settings of one evaluation run (`mpu eval`, and the experiment's)."""

from __future__ import annotations

import dataclasses

from mpu.config import check_number, field
from mpu.errors import ConfigError
from mpu.eval.flags import EvalFlags
from mpu.text import PromptConfig

BENCHMARKS = ("tofu", "muse", "wmdp")


@dataclasses.dataclass
class EvalConfig:
    """What to evaluate and how (OpenUnlearning's defaults; deviations are `flags.*`)."""

    benchmark: str | None = field(None, help="tofu | muse | wmdp (default: the data's manifest)")
    forget_split: str = field("forget10", help="TOFU forget split")
    holdout_split: str | None = field(None, help="TOFU holdout split (default: the forget split's)")
    question_key: str = field(
        "question", help="TOFU question field ('paraphrased_question' for that variant)"
    )
    metrics: list[str] | None = field(
        None, help="metric keys (WMDP: configs); default: the benchmark's suite"
    )
    batch_size: int | None = field(None, help="batch size (default: upstream's, TOFU 32, MUSE 16)")
    max_new_tokens: int = field(200, help="greedy tokens generated for ROUGE (TOFU)")
    limit: int | None = field(None, help="evaluate only the first N rows of each split")
    device: str | None = field(None, help="cpu, cuda, cuda:1 … (default: cuda when available)")
    dtype: str = field("float32", help="weights dtype: float32 | bfloat16")
    prompt: PromptConfig = dataclasses.field(
        default_factory=PromptConfig,
        metadata={
            "help": "prompt format: prompt.template, prompt.system_prompt, prompt.date_string"
        },
    )
    flags: EvalFlags = dataclasses.field(
        default_factory=EvalFlags,
        metadata={"help": "OpenUnlearning compatibility flags (docs/metrics.md)"},
    )

    def __post_init__(self) -> None:
        if isinstance(self.prompt, dict):
            self.prompt = PromptConfig(**self.prompt)
        if isinstance(self.flags, dict):
            self.flags = EvalFlags(**self.flags)
        if self.benchmark is not None and self.benchmark not in BENCHMARKS:
            raise ConfigError(
                f"benchmark={self.benchmark!r}: expected one of {', '.join(BENCHMARKS)}"
            )
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"dtype={self.dtype!r}: expected float32 or bfloat16")
        check_number(self, "batch_size", self.batch_size, low=1)
        check_number(self, "limit", self.limit, low=1)
        check_number(self, "max_new_tokens", self.max_new_tokens, low=1, allow_none=False)
