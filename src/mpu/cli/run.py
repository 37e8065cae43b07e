"""`mpu run RECIPE.yaml [key=value ...]` and `mpu demo`: the Clean / Noised / MPU experiment."""

from __future__ import annotations

import argparse

# The demo's client runs in fp32 at lr 5e-4: the stock bf16 weights round away lr-1e-5 updates
# on a 2-layer model (benchmarks/RESULTS.md, methods section), bf16 is slow on CPUs, and at
# lr 1e-4 ten epochs move the tiny target's forget probability only 0.94 -> 0.91 (at 5e-4:
# -> 0.62). forget05 (200 QA) keeps the cached demo under 5 minutes on 2 cores (forget10:
# ~7 minutes). Synthetic TOFU answers are short, so 64 greedy tokens cover them
# (OpenUnlearning generates 200).
DEMO_DEFAULTS = {
    "out": "runs/demo",
    "forget_split": "forget05",
    "methods": ["NPO", "GradDiff"],
    "server": {"copies": 2, "kappa": 0.01},
    "client": {"precision": "fp32", "lr": 5e-4},
    "eval_max_new_tokens": 64,
}


def _run(args: argparse.Namespace, mapping: dict | None = None) -> int:
    from pathlib import Path

    from mpu.config import load_config
    from mpu.pipeline.experiment import ExperimentConfig, run_experiment
    from mpu.pipeline.results import summary_table

    recipe = getattr(args, "recipe", None)
    overrides = list(args.overrides)
    if recipe is not None and "=" in recipe and not Path(recipe).is_file():
        overrides.insert(0, recipe)  # `mpu run key=value ...` without a recipe
        recipe = None
    cfg = load_config(ExperimentConfig, yaml_path=recipe, mapping=mapping, overrides=overrides)
    out = run_experiment(cfg)
    print()
    print(summary_table(out))
    print(f"\nreport: {Path(out).resolve() / 'report.html'} (also report.md, report.json)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    return _run(args, mapping=DEMO_DEFAULTS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="Clean vs Noised vs MPU per method on TOFU, evaluated, with a report"
    )
    p.add_argument("recipe", nargs="?", help="YAML recipe with ExperimentConfig keys")
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides (e.g. methods=[NPO] kappa=0.02 client.lr=2e-5)",
    )
    p.set_defaults(handler=_run)

    p = sub.add_parser(
        "demo",
        help="the embedded default end to end: synthetic TOFU forget05, tiny target/retain models, NPO and GradDiff, m=2, κ=0.01",
    )
    p.add_argument(
        "overrides", nargs="*", help="key=value overrides of the experiment (e.g. out=my-demo)"
    )
    p.set_defaults(handler=_demo)
