"""The `simoe` command line: one entry point, one subcommand per job.

Exit codes: 0 done; 2 a user error (bad option, data, model path, output directory), reported
as one line on stderr; 1 an internal error (one line; the traceback with ``--debug`` or
``SIMOE_DEBUG=1``); 130 interrupted."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence

from ..data import DataError
from . import demo, evaluate, plan, serve, train
from .common import FORMATTER, add_debug

# Errors a user can fix (ModelLoadError is a ValueError; FileNotFoundError, PermissionError,
# FileExistsError and the Hub's "not a valid model identifier" are OSErrors).
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, ValueError, OSError)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `simoe` parser with every subcommand, in the order of `simoe --help`."""
    parser = _Parser(prog="simoe", formatter_class=FORMATTER,
                     description="Sparse Interpolated Mixture-of-Experts",
                     epilog="exit codes: 0 done, 2 user error (one line on stderr), "
                            "1 internal error, 130 interrupted")
    add_debug(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (train.add_train, evaluate.add_eval, evaluate.add_report, train.add_sweep,
                evaluate.add_analyze, serve.add_export, serve.add_generate, serve.add_lm_eval,
                plan.add_plan, demo.add_demo, demo.add_data):
        add(sub)
    for p in list(sub.choices.values()):
        add_debug(p)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `simoe` command; returns the exit code (see the module doc)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    debug = bool(args.debug) or os.environ.get("SIMOE_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"simoe {args.command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if debug:
            traceback.print_exc()
        print(f"simoe {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the last line of defence of the command
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (rerun with --debug or SIMOE_DEBUG=1 for the traceback)"
        print(f"simoe {args.command}: internal error: {type(err).__name__}: {_one_line(err)}"
              f"{hint}", file=sys.stderr)
        return 1

