"""MUSE evaluation (knowmem / verbmem ROUGE, privleak, extraction strength) with OpenUnlearning's
keys and settings (docs/metrics.md). Returns the result dict and writes nothing."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mpu.errors import ConfigError
from mpu.eval import metrics as M
from mpu.eval.flags import EvalFlags
from mpu.eval.io import DataSource, check_retain_logs
from mpu.eval.mia import ATTACKS
from mpu.eval.suite import EvalRun
from mpu.text import PromptConfig, PromptFormat

log = logging.getLogger(__name__)

DEFAULT_METRICS = (
    "forget_knowmem_ROUGE",
    "retain_knowmem_ROUGE",
    "forget_verbmem_ROUGE",
    "privleak",
    "extraction_strength",
)
KNOWN_METRICS = (*DEFAULT_METRICS, "exact_memorization", *ATTACKS)
KNOWMEM_STOPWORDS = ("\n\n", "\nQuestion", "Question:")
_KNOWMEM = {"forget_knowmem_ROUGE": "forget_qa", "retain_knowmem_ROUGE": "retain_qa"}


class _Muse(EvalRun):
    def __init__(self, *args, retain_logs, reference_model, **kw) -> None:
        super().__init__(*args, **kw)
        self.retain_logs, self.reference_model = retain_logs, reference_model

    def _verbmem(self):
        return self.completion(
            "verbmem", "forget", "prompt", "gt", insert_space=True, max_length=2048
        )

    def compute(self, key: str) -> dict[str, Any]:
        if key in self.results:
            return self.results[key]
        if key in _KNOWMEM:
            split = _KNOWMEM[key]
            icl_rows = self.rows("knowmem", f"{split}_icl", ("question", "answer"), limited=False)
            icl = tuple((r["question"], r["answer"]) for r in icl_rows)
            enc = self.qa("knowmem", "answer", split=split, icl=icl)
            return self.rouge(
                key,
                enc,
                self.index("knowmem", split),
                max_new_tokens=32,
                stopwords=KNOWMEM_STOPWORDS,
                field="rougeL_f1",
                batch_size=min(self.batch_size, 16),
            )
        if key == "forget_verbmem_ROUGE":
            enc = self._verbmem()
            return self.rouge(
                key,
                enc,
                self.index("verbmem", "forget"),
                max_new_tokens=128,
                field="rougeL_f1",
                batch_size=min(self.batch_size, 8),
            )
        if key in ("extraction_strength", "exact_memorization"):
            enc = self._verbmem()
            st = self.stats(enc, "verbmem", batch_size=min(self.batch_size, 8))
            fn = (
                self.extraction_strength
                if key == "extraction_strength"
                else self.exact_memorization
            )
            return fn(key, st, self.index("verbmem", "forget"))
        if key == "privleak":
            auc = self.compute("mia_min_k")["agg_value"]
            ref = 0.5
            if self.retain_logs is not None:
                ref = self.retain_logs["mia_min_k"]["agg_value"]
            self.results[key] = {"agg_value": M.privleak(auc, ref)}
            return self.results[key]
        if key in ATTACKS:
            enc = {
                s: self.completion("privleak", s, None, "text", insert_space=False, max_length=2048)
                for s in ("forget", "holdout")
            }
            return self.attack(
                key,
                enc["forget"],
                enc["holdout"],
                self.index("privleak", "forget"),
                self.index("privleak", "holdout"),
                batch_size=min(self.batch_size, 8),
            )
        raise ConfigError(f"unknown MUSE metric {key!r}; known: {', '.join(KNOWN_METRICS)}")


def evaluate_muse(
    model: torch.nn.Module,
    tokenizer,
    data_source: DataSource,
    *,
    retain_logs: Mapping[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
    batch_size: int = 16,
    reference_model: torch.nn.Module | None = None,
    flags: EvalFlags | None = None,
    limit: int | None = None,
    precomputed: Mapping[str, Any] | None = None,
    progress: bool = True,
    prompt: PromptConfig | PromptFormat | None = None,
) -> dict[str, Any]:
    """Evaluate an (already loaded) model on MUSE; returns `{metric_key: result}`.

    Batch sizes are capped at upstream's (16 for knowmem, 8 for verbmem and privleak).
    `retain_logs` (the retrained model's MUSE_EVAL.json) supplies AUC_ret for privleak.
    """
    metrics = list(metrics or DEFAULT_METRICS)
    unknown = [m for m in metrics if m not in KNOWN_METRICS]
    if unknown:
        raise ConfigError(f"unknown MUSE metric(s) {unknown}; known: {', '.join(KNOWN_METRICS)}")
    if retain_logs is not None and "privleak" in metrics:
        check_retain_logs(retain_logs, required=["mia_min_k"])
    run = _Muse(
        model,
        tokenizer,
        data_source,
        batch_size=batch_size,
        flags=flags,
        limit=limit,
        retain_logs=retain_logs,
        reference_model=reference_model,
        prompt=prompt,
        progress=progress,
    )
    return run.run(metrics, precomputed)
