"""Named client profiles: optimizer, schedule, accumulation and precision per benchmark.

- `openunlearning`: stock OpenUnlearning (locuslab/open-unlearning@d3d7cf9, Hydra configs
  composed with `experiment=unlearn/<benchmark>/default`), HF `Trainer` semantics, bf16
  weights with a 32-bit AdamW state (`paged_adamw_32bit`).
- `paper`: what the MPU reference client ran (Tristan0318/MPU@6ffb4c3
  `pum.py::client_unlearn`): torch AdamW with decay on every parameter, constant LR,
  per-epoch accumulation with an end-of-epoch flush, pure bf16. Where its loss defaults differ
  (SimNPO γ 1, UNDIAL α 1 answer-masked, SatImp γ 1) each method declares them (`Method.paper`).
Values: docs/methods.md.
"""

from __future__ import annotations

from typing import Any

PROFILES: tuple[str, ...] = ("openunlearning", "paper")
BENCHMARKS: tuple[str, ...] = ("tofu", "muse", "wmdp")

_COMMON: dict[str, Any] = {
    "optimizer": "adamw",
    "lr": 1e-5,
    "betas": [0.9, 0.999],
    "eps": 1e-8,
    "max_grad_norm": 1.0,
    "batch_size": 8,
    "grad_accum": 4,
    "epochs": 10,
    "max_steps": 0,
    "seed": 0,
}

_TRAINING: dict[tuple[str, str], dict[str, Any]] = {
    ("paper", "tofu"): {
        "weight_decay": 0.01,
        "decay_norms_and_biases": True,
        "schedule": "constant",
        "warmup_epochs": 0.0,
        "accumulation": "epoch_flush",
        "precision": "pure_bf16",
    },
    ("openunlearning", "tofu"): {
        "weight_decay": 0.01,
        "decay_norms_and_biases": False,
        "schedule": "linear",
        "warmup_epochs": 1.0,
        "accumulation": "hf",
        "precision": "bf16_weights",
    },
    ("openunlearning", "muse"): {
        "weight_decay": 0.0,
        "decay_norms_and_biases": False,
        "schedule": "constant",
        "warmup_epochs": 0.0,
        "accumulation": "hf",
        "precision": "bf16_weights",
        "batch_size": 4,
        "grad_accum": 8,
    },
    ("openunlearning", "wmdp"): {
        "weight_decay": 0.0,
        "decay_norms_and_biases": False,
        "schedule": "constant",
        "warmup_epochs": 0.0,
        "accumulation": "hf",
        "precision": "bf16_weights",
        "lr": 5e-5,
        "batch_size": 1,
        "grad_accum": 16,
        "max_steps": 80,
    },
}
_TRAINING[("paper", "muse")] = _TRAINING[("paper", "tofu")]
_TRAINING[("paper", "wmdp")] = _TRAINING[("paper", "tofu")]


def training_defaults(profile: str, benchmark: str = "tofu") -> dict[str, Any]:
    """Optimizer / schedule / batching / precision defaults of a profile on a benchmark."""
    return {**_COMMON, **_TRAINING[(profile, benchmark)]}
