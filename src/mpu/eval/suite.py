"""Shared machinery of the QA benchmarks: cached encodings and forward passes, and the metric
handlers (probability, ROUGE, truth ratio, normalised probability) keyed as in OpenUnlearning.

A run computes each metric once and records it — dependencies included — in `results`, the
same cache upstream writes out as `{TOFU|MUSE}_EVAL.json`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from mpu.errors import DataError
from mpu.eval import metrics as M
from mpu.eval.flags import EvalFlags
from mpu.eval.io import DataSource, get_rows, require
from mpu.eval.primitives import ItemStats, greedy_generate, ground_truth_text, score_items
from mpu.text import (
    Encoded,
    PromptConfig,
    PromptFormat,
    encode_completion,
    encode_qa,
    pad_id_of,
    resolve_prompt,
)


class EvalRun:
    """One model evaluated on one data source, with caches shared by all metrics of a suite."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        data_source: DataSource,
        *,
        batch_size: int = 32,
        flags: EvalFlags | None = None,
        limit: int | None = None,
        max_length: int = 512,
        prompt: PromptConfig | PromptFormat | None = None,
        progress: bool = True,
    ) -> None:
        if tokenizer is None:
            raise DataError("evaluation needs the model's tokenizer, got None")
        if not isinstance(prompt, PromptFormat):
            prompt = resolve_prompt(tokenizer, getattr(model.config, "model_type", None), prompt)
        self.fmt = prompt
        self.model, self.tokenizer, self.source = model, tokenizer, data_source
        self.batch_size = batch_size
        self.flags = flags or EvalFlags()
        self.limit = limit
        self.max_length = max_length
        self.progress = progress
        self.pad_id = pad_id_of(tokenizer)
        self.results: dict[str, Any] = {"_meta": {"prompt_format": prompt.to_dict()}}
        self._rows: dict[tuple[str, str], list[dict]] = {}
        self._enc: dict[tuple, list[Encoded]] = {}
        self._prompts: dict = {}  # prompt ids per question (a question has several answers)
        self._stats: dict[tuple, list[ItemStats]] = {}

    # -- data ---------------------------------------------------------------------------------
    def rows(
        self, config: str, split: str = "train", fields: Sequence[str] = (), *, limited: bool = True
    ) -> list[dict]:
        """Rows of a split (the first `limit` of them unless `limited=False`, e.g. ICL pairs)."""
        key = (config, split)
        if key not in self._rows:
            self._rows[key] = get_rows(self.source, config, split)
        rows = self._rows[key]
        if limited and self.limit:
            rows = rows[: self.limit]
        require(rows, fields, f"{config}/{split}")
        return rows

    def index(self, config: str, split: str = "train") -> list[Any]:
        return [r["index"] for r in self.rows(config, split)]

    def qa(
        self,
        config: str,
        answer: str,
        *,
        split: str = "train",
        question: str = "question",
        j: int | None = None,
        icl: Sequence[tuple[str, str]] = (),
    ) -> list[Encoded]:
        """QA encodings of a split; `j` picks the j-th answer of a list-valued field."""
        key = ("qa", config, split, question, answer, j, tuple(icl))
        if key not in self._enc:
            rows = self.rows(config, split, (question, answer))
            self._enc[key] = [
                encode_qa(
                    self.tokenizer,
                    r[question],
                    r[answer] if j is None else r[answer][j],
                    fmt=self.fmt,
                    icl=icl,
                    max_length=self.max_length,
                    prompt_cache=self._prompts,
                )
                for r in rows
            ]
        return self._enc[key]

    def completion(
        self,
        config: str,
        split: str,
        prefix: str | None,
        text: str,
        *,
        insert_space: bool,
        max_length: int,
    ) -> list[Encoded]:
        key = ("completion", config, split, prefix, text, insert_space, max_length)
        if key not in self._enc:
            rows = self.rows(config, split, [f for f in (prefix, text) if f])
            self._enc[key] = [
                encode_completion(
                    self.tokenizer,
                    r.get(prefix) if prefix else None,
                    r.get(text),
                    insert_space=insert_space,
                    max_length=max_length,
                )
                for r in rows
            ]
        return self._enc[key]

    def stats(
        self, encoded: list[Encoded], desc: str, batch_size: int | None = None
    ) -> list[ItemStats]:
        key = id(encoded)
        if key not in self._stats:
            self._stats[key] = score_items(
                self.model,
                encoded,
                pad_id=self.pad_id,
                batch_size=batch_size or self.batch_size,
                mask_mode=self.flags.attention_mask,
                full_logits=self.flags.engine == "reference",
                desc=desc,
                progress=self.progress,
            )
        return self._stats[key]

    def attack(
        self,
        key: str,
        forget: list[Encoded],
        holdout: list[Encoded],
        forget_index: Sequence[Any],
        holdout_index: Sequence[Any],
        batch_size: int | None = None,
    ) -> dict:
        """One membership-inference attack on forget vs holdout items (results in upstream's schema)."""
        from mpu.eval.mia import run_attacks

        bs = batch_size or self.batch_size
        self.results.update(
            run_attacks(
                self.model,
                self.tokenizer,
                [key],
                forget,
                holdout,
                forget_index=forget_index,
                holdout_index=holdout_index,
                pad_id=self.pad_id,
                batch_size=bs,
                mask_mode=self.flags.attention_mask,
                reference_model=getattr(self, "reference_model", None),
                stats_cache=lambda name, enc: self.stats(enc, name, batch_size=bs),
                progress=self.progress,
            )
        )
        return self.results[key]

    def run(self, metrics: Sequence[str], precomputed: Mapping[str, Any] | None) -> dict:
        """Compute `metrics` (reusing compatible `precomputed` results) with a fixed torch seed."""
        from mpu.eval.io import reusable

        self.results.update(reusable(precomputed or {}, self.results["_meta"]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            for key in metrics:
                self.compute(key)
        return self.results

    def compute(self, key: str) -> dict:  # pragma: no cover - every benchmark overrides it
        raise NotImplementedError

    def n_answers(self, config: str, field: str, split: str = "train") -> int:
        """K of a list-valued answer field; every row must have the same K (upstream stacks them)."""
        rows = self.rows(config, split, (field,))
        ks = {len(r[field]) for r in rows}
        if len(ks) != 1 or 0 in ks:
            raise DataError(
                f"{config}/{split}: field {field!r} must hold the same number (>0) of answers in every row, found {sorted(ks)}"
            )
        return ks.pop()

    # -- metric handlers ----------------------------------------------------------------------
    def probability(
        self, key: str, config: str, answer: str, *, question: str = "question"
    ) -> dict:
        """Length-normalised answer probability; list-valued answer fields give lists of K values."""
        index = self.index(config)
        first = self.rows(config, fields=(answer,))[0][answer]
        if isinstance(first, list):
            per_j = [
                self.stats(self.qa(config, answer, question=question, j=j), f"{key}[{j}]")
                for j in range(self.n_answers(config, answer))
            ]
            vbi = {
                idx: {
                    "prob": [s[i].prob for s in per_j],
                    "avg_loss": [s[i].avg_loss for s in per_j],
                }
                for i, idx in enumerate(index)
            }
        else:
            st = self.stats(self.qa(config, answer, question=question), key)
            vbi = {
                idx: {"prob": s.prob, "avg_loss": s.avg_loss}
                for idx, s in zip(index, st, strict=True)
            }
        agg = M.mean_agg([v["prob"] for v in vbi.values()])
        self.results[key] = M.item_result(vbi, agg)
        return self.results[key]

    def rouge(
        self,
        key: str,
        encoded: list[Encoded],
        index: Sequence[Any],
        *,
        max_new_tokens: int,
        stopwords: Sequence[str] = (),
        field: str = "rougeL_recall",
        batch_size: int | None = None,
    ) -> dict:
        """Greedy generations scored with ROUGE against the ground truth; agg = mean of `field`."""
        gens = greedy_generate(
            self.model,
            self.tokenizer,
            [e.prompt_ids for e in encoded],
            max_new_tokens=max_new_tokens,
            stopwords=stopwords,
            pad_id=self.pad_id,
            batch_size=batch_size or self.batch_size,
            mask_mode=self.flags.attention_mask,
            engine="hf" if self.flags.engine == "reference" else "continuous",
            desc=key,
            progress=self.progress,
        )
        vbi = {}
        for idx, e, gen in zip(index, encoded, gens, strict=True):
            gt = ground_truth_text(self.tokenizer, e)
            vbi[idx] = {
                **M.rouge(gt, gen),
                "input": self.tokenizer.decode(e.prompt_ids, skip_special_tokens=True),
                "ground_truth": gt,
                "generation": gen,
            }
        self.results[key] = M.item_result(vbi, M.mean_agg([v[field] for v in vbi.values()]))
        return self.results[key]

    def truth_ratio(self, key: str, correct: str, wrong: str, aggregator: str) -> dict:
        """Truth ratio from two precomputed probability results (upstream zips the full index list)."""
        c_res, w_res = (
            self.results[correct]["value_by_index"],
            self.results[wrong]["value_by_index"],
        )
        index = list(c_res)
        c = [c_res[i]["avg_loss"] for i in index if c_res[i] is not None]
        w = [w_res[i]["avg_loss"] for i in index if w_res[i] is not None]
        if self.flags.truth_ratio_aggregator == "prob_mean":
            tr, aggregator = M.truth_ratio_prob_mean(c, w), "prob_mean"
        else:
            tr = M.truth_ratios(c, w)
        vbi = {i: {"score": float(v)} for i, v in zip(index, tr, strict=False)}
        self.results[key] = M.item_result(vbi, M.aggregate_truth_ratio(tr, aggregator))
        return self.results[key]

    def prob_w_options(self, key: str, correct: str, wrong: str) -> dict:
        """Normalised probability of the correct answer among it and the wrong ones."""
        c_res, w_res = (
            self.results[correct]["value_by_index"],
            self.results[wrong]["value_by_index"],
        )
        vbi = {
            i: {"prob": M.normalised_probability(c_res[i]["prob"], w_res[i]["prob"])} for i in c_res
        }
        self.results[key] = M.item_result(vbi, M.mean_agg([v["prob"] for v in vbi.values()]))
        return self.results[key]

    def extraction_strength(self, key: str, stats: list[ItemStats], index: Sequence[Any]) -> dict:
        vbi = {
            i: {
                "score": M.extraction_strength(
                    s.token_preds, s.token_labels, floor=self.flags.es_floor
                )
            }
            for i, s in zip(index, stats, strict=True)
        }
        self.results[key] = M.item_result(vbi, M.mean_agg([v["score"] for v in vbi.values()]))
        return self.results[key]

    def exact_memorization(self, key: str, stats: list[ItemStats], index: Sequence[Any]) -> dict:
        vbi = {
            i: {"score": M.exact_memorization(s.token_preds, s.token_labels)}
            for i, s in zip(index, stats, strict=True)
        }
        self.results[key] = M.item_result(vbi, M.mean_agg([v["score"] for v in vbi.values()]))
        return self.results[key]
