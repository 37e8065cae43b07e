"""The `mpu` command: one entry point, one sub-module per command group.

Each module in this package defines `register(subparsers)` and adds its own commands; the
handlers import heavy libraries lazily so `mpu --help` stays instant. This module is the one
error boundary: a user's fault (bad file, bad option) is an `MPUError` printed as one line
with exit code 2; a file-system fault (read-only or full disk, a path that is a file) is one
line naming the path, exit 2; Ctrl-C or SIGTERM prints one line, exit 130, and leaves the
finished work for a rerun to resume. Anything else is a bug: one line, and the traceback
with `-v`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import signal
import sys

from mpu.errors import Interrupted, MPUError, printable

EXIT_USER = 2
EXIT_NO_EFFECT = 3
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpu",
        description="Privacy-preserving LLM unlearning with multiple perturbed copies (MPU). "
        "Documentation: docs/ in the repository (start with docs/README.md).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def _on_sigterm(signum, _frame) -> None:
    raise Interrupted(f"stopped by {signal.Signals(signum).name}")


def configure_logging(verbose: bool) -> None:
    """One format for every message of every process: time, level, [job], logger, message."""
    from mpu.logs import install

    install(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.handler(args) or 0)
    except (Interrupted, KeyboardInterrupt) as exc:
        why = str(exc) if isinstance(exc, Interrupted) else "stopped by SIGINT"
        print(
            f"mpu: {why}; finished work is kept, run the same command again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except MPUError as exc:
        print(f"mpu: error: {exc}", file=sys.stderr)
        return EXIT_USER
    except OSError as exc:
        where = printable(exc.filename) if exc.filename else "a file"
        print(f"mpu: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER
    except Exception as exc:  # a bug: say so in one line, the traceback on request
        if args.verbose:
            raise
        print(
            f"mpu: internal error: {type(exc).__name__}: {printable(exc)} (run with -v for the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
