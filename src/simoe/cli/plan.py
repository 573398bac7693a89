"""`simoe plan`: estimated peak training memory per device of every method, from a config."""

from __future__ import annotations

import argparse

from .common import FORMATTER


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan", formatter_class=FORMATTER,
        help="estimated peak training memory per device (full FT, LoRA, upcycling, SIMoE)",
        description="Builds every method on the meta device from the model's config (no "
                    "weights are loaded or downloaded beyond config.json) and counts weights, "
                    "gradients, Adam's moments and the activations autograd keeps.")
    p.add_argument("--model", required=True,
                   help="a named config (smollm2-135m, llama-3.2-1b, llama-3.2-3b, "
                        "llama-3-8b), a model directory or hub id, or a .gguf file")
    p.add_argument("--devices", type=_positive, default=1, help="data-parallel devices")
    p.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp")
    p.add_argument("--batch", type=_positive, default=4, help="rows per device")
    p.add_argument("--seq", type=_positive, default=256, help="tokens per row")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="the base model's dtype (SIMoE's own parameters stay fp32)")
    p.add_argument("--sparsity", type=_fraction, default=0.75,
                   help="tau, for SIMoE after live compaction")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="as `simoe train --gradient-checkpointing` (one checkpoint per decoder "
                        "layer)")
    p.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from ..planning import format_plan, plan

    rows = plan(args.model, batch=args.batch, seq=args.seq, devices=args.devices,
                strategy=args.strategy, dtype=args.dtype, sparsity=args.sparsity,
                checkpointing=args.gradient_checkpointing)
    gc = ", gradient checkpointing" if args.gradient_checkpointing else ""
    print(f"{args.model}: {args.batch} x {args.seq} tokens per device, {args.devices} "
          f"device(s), {args.strategy}, {args.dtype}{gc}, Adam; GiB per device")
    print(format_plan(rows))
    return 0
