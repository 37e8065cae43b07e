"""`mpu report RUN_DIR... [--out DIR]`: render report.md and a self-contained report.html."""

from __future__ import annotations

import argparse


def _report(args: argparse.Namespace) -> int:
    from mpu.eval.report import render_report

    md, page = render_report(args.run_dirs, args.out)
    where = args.out or ", ".join(args.run_dirs)
    print(f"wrote {md.name} and {page.name} to {where}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `report` command."""
    p = subparsers.add_parser(
        "report",
        help="render report.md / report.html from experiment run directories",
        description="Reads RUN_DIR/report.json (schema mpu-report/1) of one or more runs and "
        "writes report.md (with PNG plots beside it) and a self-contained report.html: a metric "
        "table, per-method Clean/Noised/MPU bars, forget quality vs model utility, and κ/m sweep "
        "lines when the runs vary them. Several RUN_DIRs are combined into one report.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="experiment run directory")
    p.add_argument("--out", help="write the report here instead of into each RUN_DIR")
    p.set_defaults(handler=_report)
