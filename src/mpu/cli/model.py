"""`mpu model prepare`: build the benchmark's base, target and retain models."""

from __future__ import annotations

import argparse


def _prepare(args: argparse.Namespace) -> int:
    from mpu.config import load_config
    from mpu.pipeline.prepare import PrepareConfig, prepare_models

    mapping = {"data": args.data, "out": args.out}
    if args.model is not None:
        mapping["model"] = args.model
    if args.forget_split is not None:
        mapping["forget_split"] = args.forget_split
    config = load_config(
        PrepareConfig, yaml_path=args.config, mapping=mapping, overrides=args.overrides
    )
    prepare_models(config)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `model` command group."""
    from mpu.config import describe
    from mpu.pipeline.prepare import PrepareConfig

    model = subparsers.add_parser("model", help="models: prepare the benchmark's target/retain")
    sub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    prep = sub.add_parser(
        "prepare",
        help="fine-tune the target (on full) and retain (on the retain split) models",
        description="Writes OUT/base, OUT/target, OUT/retain (HF folders) and OUT/prepare.json; "
        "cached by a content hash of data + config.",
        epilog="options (key=value):\n" + describe(PrepareConfig),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    prep.add_argument("--data", required=True, help="dir from `mpu data make tofu`, or a hub id")
    prep.add_argument("--out", required=True, help="output dir")
    prep.add_argument("--model", help="tiny-llama (default) | smollm2 | HF model folder")
    prep.add_argument("--forget-split", help="forget01 | forget05 | forget10 (default)")
    prep.add_argument("--config", help="YAML recipe with PrepareConfig keys")
    prep.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=10")
    prep.set_defaults(handler=_prepare)
