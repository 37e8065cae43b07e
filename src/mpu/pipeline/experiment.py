"""`mpu run`: Clean vs Noised vs MPU for each unlearning method, evaluated and reported.

For every method the same client (method, hyperparameters, data order, schedule) unlearns the
same target in each variant (`mpu.pipeline.variants`: clean, noised, mpu, dp), each through the
one round loop (`mpu.server.rounds`) with the paper's rounds × epochs split for the method; all
final models, the target and the retain model are evaluated with OpenUnlearning's TOFU metrics
and reported (`report.json`, schema `mpu-report/1`). Modules: `inputs` (data, models,
reference-evaluation cache), `jobs`, `evaluation`, `workers` (the process pool), `results`.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from mpu.client.train_config import ClientTrainConfig
from mpu.config import field, to_dict
from mpu.devices import DEVICE_HELP
from mpu.errors import ConfigError
from mpu.io.checkpoint import Checkpoint
from mpu.logs import console_warnings_only, progress
from mpu.logs import job as job_label
from mpu.pipeline.jobs import IMPACT, client_settings, job_cost
from mpu.pipeline.variants import VARIANTS
from mpu.privacy.dp import DPConfig
from mpu.server.config import JobConfig
from mpu.text import PromptConfig


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
    variants: list[str] = field(
        ["clean", "noised", "mpu"],
        help="any of clean, noised, mpu, mpu_paper, mpu_uniform, dp (dp needs dp.clip)",
    )
    server: JobConfig = dataclasses.field(
        default_factory=JobConfig,
        metadata={"help": "server job settings: server.copies, server.kappa, server.alphas, …"},
    )
    client: ClientTrainConfig = dataclasses.field(
        default_factory=lambda: ClientTrainConfig(method=None),
        metadata={"help": "client settings for every method: client.lr, client.precision, …"},
    )
    prompt: PromptConfig = dataclasses.field(
        default_factory=PromptConfig,
        metadata={"help": "prompt format for training and evaluation alike: prompt.template, …"},
    )
    dp: DPConfig = dataclasses.field(
        default_factory=DPConfig,
        metadata={
            "help": "the dp variant's client: dp.clip, dp.epsilon (or dp.noise_multiplier), dp.delta"
        },
    )
    rounds_epochs: str = field(
        "paper",
        help="paper (the method's R×E split of the stock budget) | single (R = 1); "
        "client.epochs, when set, is E (epochs per round)",
    )
    seed: int = field(0, help="seed of the data order and the client")
    eval_batch_size: int = field(32, help="evaluation batch size")
    eval_device: str = field("auto", help=f"evaluation device: {DEVICE_HELP}")
    eval_max_new_tokens: int = field(
        200, help="greedy generation length for ROUGE (OpenUnlearning: 200)"
    )
    eval_limit: int | None = field(
        None, help="evaluate only the first N rows of each split (smoke runs)"
    )
    keep_models: bool = field(False, help="keep unlearned model folders (else evals, report)")
    eval_cache: bool = field(
        True, help="share evaluations between run folders by the SHA-256 of the model's files, "
        "the data and the settings (MPU_CACHE/evals)"
    )  # fmt: skip
    impact: bool = field(
        False, help="assess where the forget set lives in θ (Fisher relative to retain, "
        "`mpu client assess`) and draw the map in the report"
    )  # fmt: skip
    progress: bool = field(True, help="progress bars")
    workers: int = field(
        2,
        help="(method, variant) runs in this many parallel processes of `threads` torch "
        "threads each (1: in this process); tiny models use 2 cores better this way",
    )
    threads: int = field(1, help="torch threads per worker process")

    def __post_init__(self) -> None:
        if isinstance(self.client, dict):  # the method comes from methods=[…]
            self.client = ClientTrainConfig(**{"method": None, **self.client})
        for name, typ in (("server", JobConfig), ("prompt", PromptConfig), ("dp", DPConfig)):
            if isinstance(getattr(self, name), dict):
                setattr(self, name, typ(**getattr(self, name)))
        if "dp" in self.variants and not self.dp.enabled:
            raise ConfigError(
                "the dp variant needs dp.clip and dp.epsilon (or dp.noise_multiplier)"
            )
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ConfigError(
                f"variants={self.variants}: expected a non-empty subset of {list(VARIANTS)}"
            )
        if self.rounds_epochs not in ("paper", "single"):
            raise ConfigError(f"rounds_epochs={self.rounds_epochs!r}: expected 'paper' or 'single'")
        if self.server.copies < 2 and {"mpu", "mpu_paper", "mpu_uniform", "dp"} & set(
            self.variants
        ):
            raise ConfigError(
                f"server.copies={self.server.copies}: the mpu variant needs >= 2 copies "
                "(the noised variant is the m = 1 baseline)"
            )
        if not self.methods:
            raise ConfigError("methods=[]: name at least one unlearning method")
        if self.client.prompt != PromptConfig():
            raise ConfigError(
                "client.prompt.* is set: use prompt.* (it applies to training and evaluation alike)"
            )
        if self.workers < 1 or self.threads < 1:
            raise ConfigError(f"workers={self.workers}, threads={self.threads}: both must be >= 1")


def _say(msg: str) -> None:
    print(msg, flush=True)  # the terminal narrative of a run (logs go to stderr)


def keep_curves(work: Path, dest: Path) -> None:
    """Every client run's curves.jsonl of a job (round r, copy folder) into `dest`, as
    `round{r}-{copy}.jsonl`: the work folder goes, the curves stay for the report."""
    from mpu.client.curves import CURVES_FILE

    for path in sorted(work.glob(f"round*/client-*/{CURVES_FILE}")):
        dest.mkdir(parents=True, exist_ok=True)
        name = f"{path.parent.parent.name}-{path.parent.name.removeprefix('client-')}.jsonl"
        shutil.copyfile(path, dest / name)


class Experiment:
    """One run folder: resolves data and models, runs every (method, variant), evaluates, reports."""

    def __init__(self, cfg: ExperimentConfig, n_params: int | None = None):
        from mpu.data import tofu_splits

        self.cfg = cfg
        self.out = Path(cfg.out)
        # bad methods or hyperparameters fail now; the sizes are known once the models are
        self.settings = {m: client_settings(cfg, m, n_params) for m in cfg.methods}
        self.n_params = n_params
        tofu_splits(cfg.forget_split)
        self.timings: dict[str, float] = {}

    def evaluate(self, name: str, model_dir: Path, data: str, retain_logs: dict | None) -> dict:
        from mpu.pipeline.evaluation import evaluate_run

        results, seconds = evaluate_run(self.cfg, self.out, name, model_dir, data, retain_logs)
        if seconds:
            self.timings[f"eval/{name}"] = self.timings.get(f"eval/{name}", 0.0) + seconds
        return results

    def unlearn(self, method: str, variant: str, data: str, models: Path, work: Path) -> Path:
        """Run one (method, variant); returns the final model folder."""
        from mpu.pipeline.jobs import unlearn

        return unlearn(self.cfg, self.settings[method], variant, data, models, work)

    def job(self, name: str, data: str, models: Path, retain_logs: dict) -> dict[str, float]:
        """Unlearn (unless `name` is "target") and evaluate one run; returns its timings."""
        self.timings = {}
        with job_label(name), console_warnings_only("mpu.server"):
            return self._job(name, data, models, retain_logs)

    def _job(self, name: str, data: str, models: Path, retain_logs: dict) -> dict[str, float]:
        if name == IMPACT:
            self._impact(data, models)
            return self.timings
        if name == "target":
            self.evaluate("target", models / "target", data, retain_logs)
            return self.timings
        method, variant = name.rsplit("-", 1)
        work = self.out / "work" / name
        t = time.perf_counter()
        final = self.unlearn(method, variant, data, models, work)
        self.timings[f"unlearn/{name}"] = time.perf_counter() - t
        progress("evaluating")
        self.evaluate(name, final, data, retain_logs)
        if variant != "clean":
            from mpu.pipeline.jobs import audit_job

            progress("auditing privacy")
            t = time.perf_counter()
            audit_job(self.cfg, work, data, self.out / "eval" / name)
            self.timings[f"audit/{name}"] = time.perf_counter() - t
        keep_curves(work, self.out / "curves" / name)
        if variant == "dp":
            from mpu.pipeline.jobs import keep_dp_accounting

            keep_dp_accounting(work, self.out / "eval" / name)
        if not self.cfg.keep_models:
            shutil.rmtree(work, ignore_errors=True)
        return self.timings

    def _run_jobs(self, todo: list[str], data: str, models: Path, retain_logs: dict) -> None:
        """Every pending run, in `workers` processes when > 1; a failure stops the experiment."""
        from mpu.pipeline.progress import JobBoard
        from mpu.pipeline.workers import run_jobs

        if not todo:
            return
        todo = sorted(todo, key=lambda n: job_cost(n, self.cfg.server, self.settings), reverse=True)
        t0 = time.perf_counter()
        where = f"{self.cfg.workers} worker processes" if self.cfg.workers > 1 else "this process"
        _say(f"{len(todo)} runs in {where}, longest first: {', '.join(todo)}")
        cfg = {**to_dict(self.cfg), "progress": False}  # the job board shows the progress

        def finished(board: JobBoard, name: str, timings: dict) -> None:
            board.finished(name)
            self.timings.update(timings)
            spent = sum(v for k, v in timings.items() if k == name or k.endswith(f"/{name}"))
            _say(f"[{board.done}/{len(todo)}] {name} done ({spent:.0f} s; "
                 f"{time.perf_counter() - t0:.0f} s elapsed)")  # fmt: skip

        jobs = [(cfg, name, data, str(models), retain_logs, self.n_params) for name in todo]
        with JobBoard(todo, enabled=self.cfg.progress) as board:
            run_jobs(
                _job_in_worker,
                jobs,
                workers=self.cfg.workers,
                threads=self.cfg.threads,
                on_done=lambda job, timings: finished(board, job[1], timings),
                board=board,
            )

    def run(self) -> Path:
        from mpu.pipeline.inputs import copy_references, reference_cache, resolve_inputs
        from mpu.pipeline.results import write_report

        self.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        data, models = resolve_inputs(self.cfg, _say)
        self.timings["inputs"] = time.perf_counter() - start
        self.n_params = Checkpoint(models / "target").n_params()
        self.settings = {m: client_settings(self.cfg, m, self.n_params) for m in self.cfg.methods}
        cache = reference_cache(self.cfg, data, models)
        copy_references(cache, self.out / "eval", _say)
        _say("evaluating the retain and target models (the reference points)")
        retain_logs = self.evaluate("retain", models / "retain", data, None)
        evals = {"retain": self.evaluate("retain", models / "retain", data, retain_logs)}
        names = [f"{m}-{v}" for m in self.cfg.methods for v in self.cfg.variants]
        done = self.out / "eval"
        todo = [n for n in ["target", *names] if not (done / n / "TOFU_EVAL.json").is_file()]
        if self.cfg.impact and not (self.out / "impact" / "summary.json").is_file():
            todo.append(IMPACT)  # a job like the others: it fills a worker's idle time
        self._run_jobs(todo, data, models, retain_logs)
        copy_references(self.out / "eval", cache, _say)
        for name in ["target", *names]:
            evals[name] = self.evaluate(name, self.out / "work" / name / "final", data, retain_logs)
        self.timings["total"] = time.perf_counter() - start
        write_report(self.cfg, self.out, data, models, evals, self.timings, self.settings)
        return self.out

    def _impact(self, data: str, models: Path) -> None:
        """OUT/impact: where the forget set lives in θ (kept when a rerun finds it)."""
        from mpu.client.assess import AssessRequest, assess

        progress("assessing where the forget set lives in the target (Fisher, relative to retain)")
        t = time.perf_counter()
        assess(AssessRequest(models / "target", data, self.cfg.forget_split, self.out / "impact"))
        self.timings[IMPACT] = time.perf_counter() - t


def _job_in_worker(job: tuple) -> dict[str, float]:
    from mpu.config import load_config

    cfg, name, data, models, retain_logs, n_params = job
    experiment = Experiment(load_config(ExperimentConfig, mapping=cfg), n_params)
    return experiment.job(name, data, Path(models), retain_logs)


def run_experiment(cfg: ExperimentConfig) -> Path:
    return Experiment(cfg).run()
