"""`simoe` export, generate and lm-eval: the subcommands that use a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import FORMATTER


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="merge a SIMoE run at a fixed alpha into a plain "
                                      "transformers checkpoint", formatter_class=FORMATTER)
    p.add_argument("run", help="a SIMoE run directory")
    p.add_argument("--output", required=True, help="directory to write (refused if not empty)")
    p.add_argument("--alpha", default="mean",
                   help="mean | task:NAME | category:NAME (mean alpha of those training "
                        "prompts) | expert:I | prompt:TEXT | a JSON vector of M weights")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights dtype")
    p.add_argument("--base-model", default=None, help="the run's base model, if it moved")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --output that holds a model")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ..serving import export_run

    done = export_run(args.run, args.output, alpha=args.alpha, dtype=args.dtype,
                      base_model=args.base_model, overwrite=args.overwrite)
    print(f"exported at alpha [{', '.join(f'{a:.4f}' for a in done.alpha)}] -> {done.path}")
    return 0


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="greedy answers, each routed on its own prompt",
                       formatter_class=FORMATTER)
    p.add_argument("run", help="a SIMoE run directory (or a transformers model directory)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one prompt; the answer streams to the terminal")
    src.add_argument("--file", help="JSONL of requests with 'prompt' or chat 'messages'")
    p.add_argument("--chat", action="store_true",
                   help="render plain prompts with the tokenizer's chat template")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per answer")
    p.add_argument("--output", default=None,
                   help="JSONL of {prompt, completion, alpha} (default for --file: stdout)")
    p.add_argument("--base-model", default=None, help="the run's base model, if it moved")
    p.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from ..serving import generate_run

    generate_run(args.run, prompt=args.prompt, file=args.file, chat=args.chat,
                 max_new_tokens=args.max_new_tokens, output=args.output,
                 base_model=args.base_model)
    return 0


def add_lm_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lm-eval", help="lm-evaluation-harness tasks on a run (needs simoe[eval])",
        formatter_class=FORMATTER,
        description="Runs lm-eval with the run as its `simoe` model, each request routed on "
                    "its context. Everything after RUN is lm-eval's own command line "
                    "(--tasks, --num_fewshot, --batch_size, --limit, --output_path, ...); "
                    "--model_args adds model args (base_model, dtype, max_length, "
                    "max_gen_toks, add_bos_token).",
        epilog="example: simoe lm-eval runs/simoe --tasks arc_easy,hellaswag --batch_size 8")
    p.add_argument("run", help="a SIMoE run directory (or a transformers model directory)")
    p.add_argument("lm_eval_args", nargs=argparse.REMAINDER, metavar="LM_EVAL_ARGS",
                   help="lm-eval's options, passed through")
    p.set_defaults(func=_run_lm_eval)


def _run_lm_eval(args: argparse.Namespace) -> int:
    rest = list(args.lm_eval_args)
    if "--model" in rest:
        raise ValueError("--model is set by `simoe lm-eval` (it is `simoe`); drop it")
    if not Path(args.run).exists():
        raise FileNotFoundError(f"run {args.run} does not exist")
    model_args = f"run={args.run}"
    for i, arg in enumerate(rest):
        if arg.startswith("--model_args="):
            model_args += "," + rest.pop(i).split("=", 1)[1]
            break
        if arg == "--model_args" and i + 1 < len(rest):
            model_args += "," + rest.pop(i + 1)
            rest.pop(i)
            break
    try:
        from ..serving.lm_eval_model import main as lm_eval_main
    except ImportError as err:
        raise ValueError(str(err)) from None  # the extra is missing: a user error
    lm_eval_main(["--model", "simoe", "--model_args", model_args, *rest])
    return 0
