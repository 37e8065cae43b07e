"""TOFU evaluation with OpenUnlearning's metric keys and semantics (docs/metrics.md).

`evaluate_tofu` returns the full result dict (every computed metric, dependencies included) and
writes nothing; `mpu.eval.io.write_eval` turns it into `TOFU_EVAL.json` + `TOFU_SUMMARY.json`.
"""

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
from mpu.io.datasets import tofu_splits
from mpu.text import PromptConfig, PromptFormat

log = logging.getLogger(__name__)

DEFAULT_METRICS = (
    "forget_truth_ratio",
    "forget_quality",
    "forget_Q_A_Prob",
    "forget_Q_A_ROUGE",
    "model_utility",
    "privleak",
    "extraction_strength",
)
MODEL_UTILITY_KEYS = (
    "retain_Q_A_Prob",
    "retain_Q_A_ROUGE",
    "retain_Truth_Ratio",
    "ra_Q_A_Prob_normalised",
    "ra_Q_A_ROUGE",
    "ra_Truth_Ratio",
    "wf_Q_A_Prob_normalised",
    "wf_Q_A_ROUGE",
    "wf_Truth_Ratio",
)
# probability metrics: key -> (config template, answer field, uses question_key)
_PROB = {
    "forget_Q_A_Prob": ("{forget}_perturbed", "answer", True),
    "forget_Q_A_PARA_Prob": ("{forget}_perturbed", "paraphrased_answer", True),
    "forget_Q_A_PERT_Prob": ("{forget}_perturbed", "perturbed_answer", True),
    "retain_Q_A_Prob": ("retain_perturbed", "answer", True),
    "retain_Q_A_PARA_Prob": ("retain_perturbed", "paraphrased_answer", True),
    "retain_Q_A_PERT_Prob": ("retain_perturbed", "perturbed_answer", True),
    "ra_Q_A_Prob": ("real_authors_perturbed", "answer", False),
    "ra_Q_A_PERT_Prob": ("real_authors_perturbed", "perturbed_answer", False),
    "wf_Q_A_Prob": ("world_facts_perturbed", "answer", False),
    "wf_Q_A_PERT_Prob": ("world_facts_perturbed", "perturbed_answer", False),
    "holdout_Q_A_Prob": ("{holdout}", "answer", False),  # ours: the preparation's sanity check
}
_ROUGE = {
    "forget_Q_A_ROUGE": ("{forget}_perturbed", True),
    "retain_Q_A_ROUGE": ("retain_perturbed", True),
    "ra_Q_A_ROUGE": ("real_authors_perturbed", False),
    "wf_Q_A_ROUGE": ("world_facts_perturbed", False),
}
# truth ratios: key -> (correct, wrong, aggregator)
_TR = {
    "forget_truth_ratio": ("forget_Q_A_PARA_Prob", "forget_Q_A_PERT_Prob", "closer_to_1_better"),
    "retain_Truth_Ratio": ("retain_Q_A_PARA_Prob", "retain_Q_A_PERT_Prob", "true_better"),
    "ra_Truth_Ratio": ("ra_Q_A_Prob", "ra_Q_A_PERT_Prob", "true_better"),
    "wf_Truth_Ratio": ("wf_Q_A_Prob", "wf_Q_A_PERT_Prob", "true_better"),
}
_NORM = {
    "ra_Q_A_Prob_normalised": ("ra_Q_A_Prob", "ra_Q_A_PERT_Prob"),
    "wf_Q_A_Prob_normalised": ("wf_Q_A_Prob", "wf_Q_A_PERT_Prob"),
}
KNOWN_METRICS = (
    *DEFAULT_METRICS,
    *_PROB,
    *_ROUGE,
    *_TR,
    *_NORM,
    "exact_memorization",
    *ATTACKS,
)


class _Tofu(EvalRun):
    def __init__(
        self,
        *args,
        forget: str,
        holdout: str,
        question_key: str,
        retain_logs,
        reference_model,
        max_new_tokens: int,
        **kw,
    ) -> None:
        super().__init__(*args, **kw)
        self.forget, self.holdout, self.qkey = forget, holdout, question_key
        self.retain_logs = retain_logs
        self.reference_model = reference_model
        self.max_new_tokens = max_new_tokens

    def _forget_answer(self):
        cfg = f"{self.forget}_perturbed"
        return cfg, self.qa(cfg, "answer", question=self.qkey), self.index(cfg)

    def compute(self, key: str) -> dict[str, Any]:
        """Compute `key` (and its dependencies) unless already in `results`."""
        if key in self.results:
            return self.results[key]
        if key in _PROB:
            cfg, answer, uses_q = _PROB[key]
            q = self.qkey if uses_q else "question"
            cfg = cfg.format(forget=self.forget, holdout=self.holdout)
            return self.probability(key, cfg, answer, question=q)
        if key in _ROUGE:
            cfg, uses_q = _ROUGE[key]
            cfg = cfg.format(forget=self.forget)
            enc = self.qa(cfg, "answer", question=self.qkey if uses_q else "question")
            return self.rouge(key, enc, self.index(cfg), max_new_tokens=self.max_new_tokens)
        if key in _TR:
            correct, wrong, agg = _TR[key]
            self.compute(correct), self.compute(wrong)
            return self.truth_ratio(key, correct, wrong, agg)
        if key in _NORM:
            correct, wrong = _NORM[key]
            self.compute(correct), self.compute(wrong)
            return self.prob_w_options(key, correct, wrong)
        if key == "forget_quality":
            tr = self.compute("forget_truth_ratio")
            if self.retain_logs is None:
                self.results[key] = {"agg_value": None}
            else:
                ref = self.retain_logs["forget_truth_ratio"]["value_by_index"]
                model_tr = [v["score"] for v in tr["value_by_index"].values()]
                ref_tr = [v["score"] for v in ref.values()]
                self.results[key] = {"agg_value": M.forget_quality(model_tr, ref_tr)}
            return self.results[key]
        if key == "model_utility":
            values = [self.compute(k)["agg_value"] for k in MODEL_UTILITY_KEYS]
            self.results[key] = {"agg_value": M.harmonic_mean(values)}
            return self.results[key]
        if key == "privleak":
            auc = self.compute("mia_min_k")["agg_value"]
            ref = 0.5
            if self.retain_logs is not None and "mia_min_k" in self.retain_logs:
                ref = self.retain_logs["mia_min_k"]["agg_value"]
            elif self.retain_logs is not None:
                log.warning("retain logs have no mia_min_k; privleak uses AUC_ret = 0.5")
            self.results[key] = {"agg_value": M.privleak(auc, ref)}
            return self.results[key]
        if key in ("extraction_strength", "exact_memorization"):
            _, enc, index = self._forget_answer()
            st = self.stats(enc, "forget_Q_A_Prob")
            fn = (
                self.extraction_strength
                if key == "extraction_strength"
                else self.exact_memorization
            )
            return fn(key, st, index)
        if key in ATTACKS:
            cfg, forget_enc, forget_index = self._forget_answer()
            holdout_enc = self.qa(self.holdout, "answer")
            return self.attack(key, forget_enc, holdout_enc, forget_index, self.index(self.holdout))
        raise ConfigError(f"unknown TOFU metric {key!r}; known: {', '.join(KNOWN_METRICS)}")


def evaluate_tofu(
    model: torch.nn.Module,
    tokenizer,
    data_source: DataSource,
    *,
    forget_split: str = "forget10",
    holdout_split: str | None = None,
    retain_logs: Mapping[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
    batch_size: int = 32,
    question_key: str = "question",
    max_new_tokens: int = 200,
    reference_model: torch.nn.Module | None = None,
    flags: EvalFlags | None = None,
    limit: int | None = None,
    precomputed: Mapping[str, Any] | None = None,
    progress: bool = True,
    prompt: PromptConfig | PromptFormat | None = None,
) -> dict[str, Any]:
    """Evaluate an (already loaded) model on TOFU; returns `{metric_key: result}`, writes nothing.

    `metrics` defaults to OpenUnlearning's TOFU suite; dependencies (e.g. forget_Q_A_PARA_Prob,
    mia_min_k) are computed and returned too. `retain_logs` is the retain model's TOFU_EVAL.json
    (see `mpu.eval.io.read_eval_log`); without it forget_quality is None and privleak uses 0.5.
    `question_key="paraphrased_question"` gives the paraphrased-question variant of the forget
    and retain metrics. `limit` evaluates only the first rows of each split (benchmarks).
    `precomputed` (e.g. a previous TOFU_EVAL.json) supplies results that are reused as they are;
    forget_quality, privleak and model_utility are always recomputed from their dependencies.
    """
    holdout = holdout_split or tofu_splits(forget_split).holdout
    metrics = list(metrics or DEFAULT_METRICS)
    unknown = [m for m in metrics if m not in KNOWN_METRICS]
    if unknown:
        raise ConfigError(f"unknown TOFU metric(s) {unknown}; known: {', '.join(KNOWN_METRICS)}")
    run = _Tofu(
        model,
        tokenizer,
        data_source,
        batch_size=batch_size,
        flags=flags,
        limit=limit,
        forget=forget_split,
        holdout=holdout,
        question_key=question_key,
        retain_logs=retain_logs,
        reference_model=reference_model,
        max_new_tokens=max_new_tokens,
        prompt=prompt,
        progress=progress,
    )
    if retain_logs is not None and ("forget_quality" in metrics or "privleak" in metrics):
        check_retain_logs(
            retain_logs,
            required=["forget_truth_ratio"],
            per_item={"forget_truth_ratio": run.index(f"{forget_split}_perturbed")},
        )
    return run.run(metrics, precomputed)
