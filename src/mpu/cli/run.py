"""`mpu run [RECIPE.yaml] [key=value ...]` and `mpu demo`: the Clean / Noised / MPU experiment."""

from __future__ import annotations

import argparse

# The demo: synthetic TOFU forget05 (200 QA keep the cached demo around 5 minutes on 2 cores),
# NPO and GradDiff, m = 4, κ = 0.1: the noise at which one noisy copy departs from Clean on this
# model while MPU's extrapolation stays with it (benchmarks/RESULTS.md, issue 25). Its client
# settings come from the same small-model rule as every other run's (docs/methods.md, "Defaults
# that unlearn"). Synthetic TOFU answers are short, so 64 greedy tokens cover them
# (OpenUnlearning generates 200).
DEMO_DEFAULTS = {
    "out": "runs/demo",
    "forget_split": "forget05",
    "methods": ["NPO", "GradDiff"],
    "server": {"copies": 4, "kappa": 0.1},
    "eval_max_new_tokens": 64,
    "impact": True,
}
HIDDEN = ("client.method", "client.prompt")  # set by the experiment (methods=, prompt.*)


def _settings(args: argparse.Namespace, recipe: str | None) -> tuple[str | None, list[str]]:
    """The recipe and the key=value overrides, with --out and a forgotten '=' handled."""
    from pathlib import Path

    from mpu.errors import ConfigError

    overrides = list(args.overrides)
    if recipe is not None and not Path(recipe).is_file():
        if "=" in recipe:
            overrides.insert(0, recipe)  # `mpu run key=value ...` without a recipe
            recipe = None
        elif not recipe.endswith((".yaml", ".yml")):
            from mpu.config import suggest
            from mpu.pipeline.experiment import ExperimentConfig

            key = (suggest(ExperimentConfig, recipe) or [recipe])[0]
            value = overrides[0] if overrides and "=" not in overrides[0] else "VALUE"
            hint = f"; did you mean {key}={value}?"
            raise ConfigError(
                f"{recipe!r} is neither a recipe file nor a key=value setting{hint} "
                "(settings: mpu run --help)"
            )
    if getattr(args, "out", None):
        overrides.append(f"out={args.out}")
    return recipe, overrides


def _run(args: argparse.Namespace, mapping: dict | None = None) -> int:
    from pathlib import Path

    from mpu.config import load_config
    from mpu.pipeline.experiment import ExperimentConfig, run_experiment
    from mpu.pipeline.results import summary_table

    recipe, overrides = _settings(args, getattr(args, "recipe", None))
    if args.quiet:
        overrides.append("progress=false")
    cfg = load_config(ExperimentConfig, yaml_path=recipe, mapping=mapping, overrides=overrides)
    out = run_experiment(cfg)
    print()
    print(summary_table(out))
    print(f"\nreport: {Path(out).resolve() / 'report.html'} (also report.md, report.json)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    return _run(args, mapping=DEMO_DEFAULTS)


def _epilog() -> str:
    from mpu.config import describe
    from mpu.pipeline.experiment import ExperimentConfig

    return "settings (key=value; nested with dots):\n" + describe(ExperimentConfig, skip=HIDDEN)


def register(sub: argparse._SubParsersAction) -> None:
    common = dict(formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog())
    p = sub.add_parser(
        "run",
        help="Clean vs Noised vs MPU per method on TOFU, evaluated, with a report",
        description="Unlearn the target with each method three ways (Clean, Noised, MPU), "
        "evaluate every model with OpenUnlearning's TOFU metrics and write report.{json,md,html}. "
        "Settings come from a YAML recipe and/or key=value overrides, e.g. "
        "`mpu run methods=[NPO] server.kappa=0.05 client.lr=1e-4`.",
        **common,
    )
    p.add_argument("recipe", nargs="?", help="YAML recipe with the settings below")
    p.add_argument("overrides", nargs="*", help="key=value settings (listed below)")
    p.add_argument("--out", help="run folder (same as out=DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(handler=_run)

    p = sub.add_parser(
        "demo",
        help="the embedded default end to end: synthetic TOFU "
        f"{DEMO_DEFAULTS['forget_split']}, tiny target/retain models, "
        f"{' and '.join(DEMO_DEFAULTS['methods'])}, m={DEMO_DEFAULTS['server']['copies']}, "
        f"κ={DEMO_DEFAULTS['server']['kappa']}",
        description="`mpu run` with the demo's settings: "
        + ", ".join(f"{k}={v}" for k, v in DEMO_DEFAULTS.items())
        + ". Any setting below can be overridden.",
        **common,
    )
    p.add_argument("overrides", nargs="*", help="key=value settings (listed below)")
    p.add_argument("--out", help="run folder (same as out=DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(handler=_demo)
