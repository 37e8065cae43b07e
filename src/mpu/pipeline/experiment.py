"""`mpu run`: Clean vs Noised vs MPU for each unlearning method, evaluated and reported.

For every method, three ways to unlearn the same target with the same client (method,
hyperparameters, data order, schedule):

- **clean**: the client unlearns θ itself (what a trusted server would do; the upper bound);
- **noised**: one perturbed copy (m = 1, no centring, no harmonic denoising), its update
  mapped back and applied to θ — the single-noisy-copy baseline (MPU.md F2);
- **mpu**: m perturbed copies, harmonic aggregation.

Each runs the paper's rounds × epochs split for the method (MPU.md §8; R·E = the stock epoch
budget), with one learning-rate schedule over all R·E epochs and a fresh optimizer per copy
and round; clean runs the same R rounds on θ so the three differ only by the protocol. The
reference model (NPO, DPO, UNDIAL, RMU, KL retain) follows `first_round_copy`: the round-1
copy with the same position (θ_1 for clean). All final models, the target and the retain
model are evaluated on TOFU with OpenUnlearning's metrics; `report.json` follows the
`mpu-report/1` schema rendered by `mpu report`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

from mpu.config import field, to_dict
from mpu.errors import ConfigError

VARIANTS = ("clean", "noised", "mpu")


@dataclasses.dataclass
class ExperimentConfig:
    """An experiment recipe (YAML keys = these fields; `key=value` overrides on the command line)."""

    out: str = field(
        "runs/experiment", help="run folder (report.json, report.md/html, evals, models)"
    )
    data: str | None = field(
        None,
        help="TOFU data folder or hub id (default: the embedded synthetic TOFU, made on first use)",
    )
    models: str | None = field(
        None,
        help="folder with base/ target/ retain/ (default: tiny models prepared and cached on first use)",
    )
    forget_split: str = field("forget10", help="forget split (retain split = its complement)")
    methods: list[str] = field(["NPO", "GradDiff"], help="unlearning methods to compare")
    variants: list[str] = field(list(VARIANTS), help="subset of clean, noised, mpu")
    copies: int = field(2, help="m for the mpu variant")
    kappa: float = field(0.01, help="κ, relative noise level (noised and mpu)")
    alphas: str = field("linspace", help="noise scales: linspace | random | a,b,..")
    angles: str = field("continuous", help="reparameterization angles: continuous | quarter_turn")
    rounds_epochs: str = field(
        "paper", help="paper (per-method R×E split of MPU.md §8) | single (R = 1)"
    )
    client: dict[str, Any] = field(
        {}, help="ClientTrainConfig overrides for every method (e.g. client.lr=1e-4)"
    )
    seed: int = field(0, help="seed of the data order and the client")
    eval_batch_size: int = field(32, help="evaluation batch size")
    eval_max_new_tokens: int = field(
        200, help="greedy generation length for ROUGE (OpenUnlearning: 200)"
    )
    eval_limit: int | None = field(
        None, help="evaluate only the first N rows of each split (smoke runs)"
    )
    keep_models: bool = field(
        False, help="keep the unlearned model folders (else only evals and report)"
    )
    progress: bool = field(True, help="progress bars")
    workers: int = field(
        2,
        help="(method, variant) runs in this many parallel processes of `threads` torch "
        "threads each (1: in this process); tiny models use 2 cores better this way",
    )
    threads: int = field(1, help="torch threads per worker process")

    def __post_init__(self) -> None:
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ConfigError(
                f"variants must be a non-empty subset of {VARIANTS}, got {self.variants}"
            )
        if self.rounds_epochs not in ("paper", "single"):
            raise ConfigError(
                f"rounds_epochs must be 'paper' or 'single', got {self.rounds_epochs!r}"
            )
        if self.copies < 2 and "mpu" in self.variants:
            raise ConfigError(
                "the mpu variant needs copies >= 2 (the noised variant is the m = 1 baseline)"
            )
        if not self.methods:
            raise ConfigError("methods must name at least one unlearning method")
        if self.workers < 1 or self.threads < 1:
            raise ConfigError(
                f"workers and threads must be >= 1 ({self.workers=}, {self.threads=})"
            )


def client_config(cfg: ExperimentConfig, method: str):
    """The method's ClientTrainConfig (validated now, before any training)."""
    from mpu.client.train_config import ClientTrainConfig
    from mpu.config import load_config

    return load_config(
        ClientTrainConfig, mapping={**cfg.client, "method": method, "seed": cfg.seed}
    )


def _say(msg: str) -> None:
    print(msg, flush=True)


class Experiment:
    """One run folder: resolves data and models, runs every (method, variant), evaluates, reports."""

    def __init__(self, cfg: ExperimentConfig):
        from mpu.client.unlearn import retain_split_for

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.clients = {
            m: client_config(cfg, m) for m in cfg.methods
        }  # bad method/hparam: fail now
        self.retain_split = retain_split_for(cfg.forget_split)
        if self.retain_split is None:
            raise ConfigError(f"forget_split must look like forget10, got {cfg.forget_split!r}")
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ inputs
    def resolve_inputs(self) -> tuple[str, Path]:
        from mpu.io.gguf import cache_dir

        t = time.perf_counter()
        data = self.cfg.data
        if data is None:
            from mpu.data import make_dataset

            data = str(cache_dir() / "data" / f"tofu-seed{self.cfg.seed}")
            if not (Path(data) / "manifest.json").is_file():
                _say(f"making the synthetic TOFU benchmark in {data}")
                make_dataset("tofu", data, seed=self.cfg.seed)
        models = Path(self.cfg.models) if self.cfg.models else None
        if models is None:
            from mpu.pipeline.prepare import PrepareConfig, prepare_models

            models = (
                cache_dir() / "models" / f"tiny-llama-{self.cfg.forget_split}-seed{self.cfg.seed}"
            )
            prepare_models(
                PrepareConfig(
                    data=data,
                    out=str(models),
                    forget_split=self.cfg.forget_split,
                    seed=self.cfg.seed,
                    progress=self.cfg.progress,
                )
            )
        for sub in ("base", "target", "retain"):
            if not (models / sub / "config.json").is_file():
                raise ConfigError(
                    f"{models / sub}: missing; --models needs base/, target/ and retain/ model folders"
                )
        self.timings["inputs"] = time.perf_counter() - t
        return data, models

    # ------------------------------------------------------------------ unlearning
    def _rounds(self, method: str) -> tuple[int, int]:
        from mpu.methods.schedule import rounds_and_epochs

        rounds, epochs = rounds_and_epochs(method)
        if self.cfg.rounds_epochs == "single":
            return 1, rounds * epochs
        return rounds, epochs

    def unlearn(self, method: str, variant: str, data: str, models: Path, work: Path) -> Path:
        """Run one (method, variant); returns the final model folder."""
        from mpu.client.trainer import round_schedule, usable_items
        from mpu.client.unlearn import load_client_data, unlearn_copy
        from mpu.server.config import JobConfig
        from mpu.server.job import Server

        base_cfg = self.clients[method]
        rounds, epochs = self._rounds(method)
        cfg = dataclasses.replace(base_cfg, epochs=epochs)
        client_data = load_client_data(
            data, self.cfg.forget_split, cfg, retain_split=self.retain_split
        )
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(models / "target"))
        schedule = round_schedule(usable_items(tok, client_data.forget, cfg), cfg, rounds)
        m, kappa = {
            "clean": (1, 0.0),
            "noised": (1, self.cfg.kappa),
            "mpu": (self.cfg.copies, self.cfg.kappa),
        }[variant]
        job = JobConfig(
            copies=m,
            kappa=kappa,
            alphas=self.cfg.alphas if m > 1 else "linspace",
            angles=self.cfg.angles,
            reparameterize=variant != "clean",
            gate=False,
        )
        server = Server.init(models / "target", models / "base", work / "server", job)
        first_round: list[Path] = []
        for r in range(rounds):
            copies = server.publish(work / f"round{r + 1}" / "outbox", progress=False)
            round_cfg = dataclasses.replace(cfg, **schedule[r])
            deltas = []
            for i, copy in enumerate(copies):
                reference = first_round[i] if r > 0 else None
                _, delta, _ = unlearn_copy(
                    copy,
                    client_data,
                    round_cfg,
                    work / f"round{r + 1}" / f"client-{copy.name}",
                    reference_dir=reference,
                    order_seed=self.cfg.seed * 1000 + r,
                    progress=self.cfg.progress,
                )
                deltas.append(delta)
            if r == 0:
                first_round = copies
            server.aggregate(deltas, progress=False)
        return server.export(work / "final", dtype="float32")

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, name: str, model_dir: Path, data: str, retain_logs: dict | None) -> dict:
        import torch

        from mpu.eval.io import load_model, read_eval_log, write_eval
        from mpu.eval.tofu import DEFAULT_METRICS, evaluate_tofu

        eval_dir = self.out / "eval" / name
        previous = None
        if (eval_dir / "TOFU_EVAL.json").is_file():
            previous = read_eval_log(eval_dir / "TOFU_EVAL.json")
            fq = (previous.get("forget_quality") or {}).get("agg_value")
            if retain_logs is None or fq is not None:
                return previous
            # evaluated before the retain logs existed (the retain model itself): recompute
            # forget quality and privleak from the stored per-item results
        t = time.perf_counter()
        torch.manual_seed(0)
        model, tokenizer = load_model(model_dir)
        results = evaluate_tofu(
            model,
            tokenizer,
            data,
            forget_split=self.cfg.forget_split,
            retain_logs=retain_logs,
            batch_size=self.cfg.eval_batch_size,
            max_new_tokens=self.cfg.eval_max_new_tokens,
            limit=self.cfg.eval_limit,
            precomputed=previous,
            progress=self.cfg.progress,
        )
        write_eval(results, eval_dir / "TOFU_EVAL.json", summary_keys=list(DEFAULT_METRICS))
        key = f"eval/{name}"  # the retain model is scored twice (then against itself)
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t
        return read_eval_log(eval_dir / "TOFU_EVAL.json")

    # ------------------------------------------------------------------ jobs
    def _evaluated(self, name: str) -> bool:
        return (self.out / "eval" / name / "TOFU_EVAL.json").is_file()

    def job(self, name: str, data: str, models: Path, retain_logs: dict) -> dict[str, float]:
        """Unlearn (unless `name` is "target") and evaluate one run; returns its timings."""
        self.timings = {}
        if name == "target":
            self.evaluate("target", models / "target", data, retain_logs)
            return self.timings
        method, variant = name.rsplit("-", 1)
        work = self.out / "work" / name
        shutil.rmtree(work, ignore_errors=True)
        t = time.perf_counter()
        final = self.unlearn(method, variant, data, models, work)
        self.timings[f"unlearn/{name}"] = time.perf_counter() - t
        self.evaluate(name, final, data, retain_logs)
        if not self.cfg.keep_models:
            shutil.rmtree(work, ignore_errors=True)
        return self.timings

    def _cost(self, name: str) -> int:
        """Relative run time, to start the longest runs first (fewer idle workers at the end)."""
        if name == "target":
            return 1
        from mpu.methods.registry import get_method

        method, variant = name.rsplit("-", 1)
        copies = self.cfg.copies if variant == "mpu" else 1
        client = self.clients[method]
        reads_reference = get_method(method).uses_reference(client.method_config())
        return 2 + 2 * copies * (2 if reads_reference else 1)

    def _run_jobs(self, todo: list[str], data: str, models: Path, retain_logs: dict) -> None:
        """Every pending run, in `workers` processes when > 1; a failure stops the experiment."""
        if not todo:
            return
        todo = sorted(todo, key=self._cost, reverse=True)
        t0 = time.perf_counter()
        if self.cfg.workers == 1 or len(todo) == 1:
            for i, name in enumerate(todo):
                _say(f"[{i + 1}/{len(todo)}] {name}")
                self.timings.update(Experiment(self.cfg).job(name, data, models, retain_logs))
            return
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        _say(f"{len(todo)} runs on {self.cfg.workers} worker processes "
             f"({self.cfg.threads} torch thread(s) each), longest first")  # fmt: skip
        cfg = {**to_dict(self.cfg), "progress": False}
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(self.cfg.workers, len(todo)),
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(self.cfg.threads,),
        ) as pool:
            futures = {
                pool.submit(_job_in_worker, cfg, name, data, str(models), retain_logs): name
                for name in todo
            }
            pending, done_n = set(futures), 0
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    name = futures[fut]
                    try:
                        timings = fut.result()
                    except BaseException:
                        for other in pending:
                            other.cancel()
                        raise
                    done_n += 1
                    self.timings.update(timings)
                    spent = sum(v for k, v in timings.items() if k.endswith(f"/{name}"))
                    _say(f"[{done_n}/{len(todo)}] {name} done ({spent:.0f} s; "
                         f"{time.perf_counter() - t0:.0f} s elapsed)")  # fmt: skip

    # ------------------------------------------------------------------ reference evaluations
    def _reference_cache(self, data: str, models: Path) -> Path | None:
        """Where the retain and target evaluations of prepared models are kept across runs.

        Only for a models folder made by `mpu model prepare` (its content hash names the
        models); the key also covers the data (path and manifest) and every evaluation
        setting, so a different suite never reuses them.
        """
        import hashlib

        record = models / "prepare.json"
        if not record.is_file():
            return None
        manifest = Path(data) / "manifest.json"
        key = {
            "version": "reference-evals-1",
            "models": json.loads(record.read_text()).get("content_hash"),
            "data": str(data),
            "manifest": manifest.read_text() if manifest.is_file() else None,
            "forget_split": self.cfg.forget_split,
            "max_new_tokens": self.cfg.eval_max_new_tokens,
            "batch_size": self.cfg.eval_batch_size,
            "limit": self.cfg.eval_limit,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return models / "reference-evals" / digest[:16]

    @staticmethod
    def _copy_references(src: Path | None, dst: Path | None) -> None:
        """Copy eval/{retain,target} folders that `dst` lacks (each via a temp dir + rename)."""
        if src is None or dst is None:
            return
        for name in ("retain", "target"):
            if not (src / name / "TOFU_EVAL.json").is_file() or (dst / name).exists():
                continue
            tmp = dst / f".{name}.tmp"
            try:
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(src / name, tmp)
                tmp.rename(dst / name)
            except OSError as exc:  # a read-only models folder: just do not cache
                shutil.rmtree(tmp, ignore_errors=True)
                _say(f"note: reference evaluations not cached in {dst} ({exc})")

    # ------------------------------------------------------------------ the whole run
    def run(self) -> Path:
        from mpu.eval.io import summary_of
        from mpu.eval.tofu import DEFAULT_METRICS

        self.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        data, models = self.resolve_inputs()
        cache = self._reference_cache(data, models)
        self._copy_references(cache, self.out / "eval")
        _say("evaluating the retain and target models (the reference points)")
        retain_logs = self.evaluate("retain", models / "retain", data, None)
        runs = []

        def record(method: str | None, variant: str, logs: dict, m=None, kappa=None) -> None:
            runs.append(
                {
                    "method": method,
                    "variant": variant,
                    "m": m,
                    "kappa": kappa,
                    "summary": summary_of(logs, list(DEFAULT_METRICS)),
                    "eval_file": f"eval/{variant if method is None else f'{method}-{variant}'}/TOFU_EVAL.json",
                }
            )

        record(None, "retain", self.evaluate("retain", models / "retain", data, retain_logs))
        names = [f"{m}-{v}" for m in self.cfg.methods for v in self.cfg.variants]
        todo = [n for n in ["target", *names] if not self._evaluated(n)]
        self._run_jobs(todo, data, models, retain_logs)
        record(None, "target", self.evaluate("target", models / "target", data, retain_logs))
        self._copy_references(self.out / "eval", cache)
        for method in self.cfg.methods:
            for variant in self.cfg.variants:
                name = f"{method}-{variant}"
                logs = self.evaluate(name, self.out / "work" / name / "final", data, retain_logs)
                m = self.cfg.copies if variant == "mpu" else (1 if variant == "noised" else None)
                record(
                    method, variant, logs, m=m, kappa=None if variant == "clean" else self.cfg.kappa
                )
        self.timings["total"] = time.perf_counter() - start
        report = {
            "schema": "mpu-report/1",
            "benchmark": "tofu",
            "title": f"Clean vs Noised vs MPU on {Path(data).name} {self.cfg.forget_split} (m={self.cfg.copies}, κ={self.cfg.kappa})",
            "config": {
                **to_dict(self.cfg),
                "data": data,
                "models": str(models),
                "rounds_epochs_by_method": {m: self._rounds(m) for m in self.cfg.methods},
            },
            "timings_s": self.timings,
            "runs": runs,
        }
        from mpu.data.store import write_json

        write_json(self.out / "report.json", report)
        from mpu.eval.report import render_report

        render_report([self.out], self.out)
        return self.out


def _worker_init(threads: int) -> None:
    """Quiet, single-purpose worker: no progress bars (set before tqdm is imported)."""
    import os

    os.environ["TQDM_DISABLE"] = "1"
    import torch

    torch.set_num_threads(threads)


def _job_in_worker(
    cfg: dict, name: str, data: str, models: str, retain_logs: dict
) -> dict[str, float]:
    from mpu.config import load_config

    experiment = Experiment(load_config(ExperimentConfig, mapping=cfg))
    return experiment.job(name, data, Path(models), retain_logs)


def run_experiment(cfg: ExperimentConfig) -> Path:
    return Experiment(cfg).run()


def summary_table(
    run_dir: Path,
    keys: tuple[str, ...] = ("forget_quality", "model_utility", "forget_Q_A_Prob", "privleak"),
) -> str:
    """A compact text table of report.json for the terminal."""
    report = json.loads((Path(run_dir) / "report.json").read_text())
    lines = [f"{'run':24s}" + "".join(f"{k:>18s}" for k in keys)]
    for r in report["runs"]:
        name = r["variant"] if r["method"] is None else f"{r['method']}-{r['variant']}"
        vals = "".join(
            f"{r['summary'].get(k) if r['summary'].get(k) is not None else float('nan'):>18.4g}"
            for k in keys
        )
        lines.append(f"{name:24s}{vals}")
    return "\n".join(lines)
