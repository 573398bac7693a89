"""What every `simoe` subcommand shares: the help formatter and the --debug flag."""

from __future__ import annotations

import argparse

FORMATTER = argparse.ArgumentDefaultsHelpFormatter


def add_debug(p: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    """--debug on the top-level parser (default False) and on each subcommand."""
    p.add_argument("--debug", action="store_true", default=default,
                   help="print the traceback of an error (also: SIMOE_DEBUG=1)")
