"""`simoe` demo and data: the offline demo and the embedded benchmark."""

from __future__ import annotations

import argparse

from .common import FORMATTER


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole SIMoE story offline on the embedded default",
                       formatter_class=FORMATTER)
    p.add_argument("--output", default="runs/demo", help="demo directory (the base is cached)")
    p.add_argument("--quick", action="store_true", help="the same pipeline in under 2 minutes")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    run_demo(args.output, quick=args.quick, seed=args.seed)
    return 0


def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data utilities", formatter_class=FORMATTER)
    data_sub = p.add_subparsers(dest="data_command", required=True)
    s = data_sub.add_parser("synth", help="write the embedded synthetic benchmark (SNI format)",
                            formatter_class=FORMATTER)
    s.add_argument("--output", required=True, help="benchmark directory")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--instances-per-task", type=int, default=60)
    s.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from ..synthetic import write_benchmark

    path = write_benchmark(args.output, seed=args.seed,
                           instances_per_task=args.instances_per_task)
    print(f"benchmark written to {path}")
    return 0
