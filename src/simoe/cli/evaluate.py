"""`simoe` eval, report and analyze: the subcommands that score and explain runs."""

from __future__ import annotations

import argparse

from .common import FORMATTER


def add_eval(sub: argparse._SubParsersAction) -> None:
    from ..evaluation.run import EVAL_DTYPES, EvalJob

    d = EvalJob(model="", data="", output="")
    p = sub.add_parser("eval", help="generate and score ROUGE-L per task and category",
                       formatter_class=FORMATTER)
    p.add_argument("--model", required=True,
                   help="a SIMoE run directory or a transformers model (path or hub id)")
    p.add_argument("--data", required=True, help="SNI-style directory, JSONL or HF dataset")
    p.add_argument("--output", required=True, help="evaluation directory")
    p.add_argument("--split", default=d.split, help="split to evaluate")
    p.add_argument("--max-instances", type=int, default=d.max_instances,
                   help="instances per task")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="prompts per batch")
    p.add_argument("--max-source-len", type=int, default=d.max_source_len,
                   help="prompt tokens (longer prompts lose tokens on the left)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help="greedy decoding stops at EOS or after this many tokens")
    p.add_argument("--device", default=None, help="e.g. cuda; default: where the model loads")
    p.add_argument("--dtype", choices=list(EVAL_DTYPES), default=d.dtype,
                   help="the base model's weights; a SIMoE run's deltas, gates and router stay "
                        "fp32 (bf16 is faster where matmuls have bf16 units: recent GPUs, CPUs "
                        "with AVX512-BF16/AMX)")
    p.add_argument("--base-model", default=None,
                   help="SIMoE run: load this base model instead of the path the run recorded "
                        "(when the base has moved; its files must match the recorded "
                        "fingerprint)")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from ..evaluation.run import EvalJob, evaluate

    fields = EvalJob.__dataclass_fields__
    metrics = evaluate(EvalJob(**{k: v for k, v in vars(args).items() if k in fields}))
    o = metrics["overall"]
    print(f"ROUGE-L {o['rougeL']:.2f} (exact match {o['exact_match']:.2f}) over "
          f"{o['categories']} categories, {o['tasks']} tasks, {o['n']} instances -> {args.output}")
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="merge evaluation directories into one Table-1-style table",
                       formatter_class=FORMATTER)
    p.add_argument("eval_dirs", nargs="+", help="directories written by `simoe eval`")
    p.add_argument("--output", required=True, help="markdown file to write")
    p.add_argument("--names", default=None, help="comma-separated row names (default: dir names)")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from ..evaluation.run import comparison_report
    from ..runtime import check_output_file

    names = args.names.split(",") if args.names else None
    if names and len(names) != len(args.eval_dirs):
        raise ValueError(f"--names has {len(names)} names for {len(args.eval_dirs)} directories")
    out = check_output_file(args.output)
    text = comparison_report(args.eval_dirs, names)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


def add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="figures and report for one or several runs",
                       formatter_class=FORMATTER,
                       description="Expert overlap, kept capacity, routing dendrogram, training "
                                   "curves and (several runs) parameter/memory comparison.")
    p.add_argument("runs", nargs="+", help="run directories written by `simoe train`")
    p.add_argument("--eval", dest="eval_dirs", nargs="*", default=[],
                   help="evaluation directories (routing figures need SIMoE predictions)")
    p.add_argument("--output", required=True, help="directory for PNGs, report.md, report.html")
    p.add_argument("--names", default=None, help="comma-separated run names")
    p.set_defaults(func=_run_analyze)


def _run_analyze(args: argparse.Namespace) -> int:
    from ..analysis import analyze
    from ..runtime import check_output_dir

    names = args.names.split(",") if args.names else None
    check_output_dir(args.output)
    summary = analyze(args.runs, args.eval_dirs, args.output, names=names)
    for item in summary.get("skipped", []):
        print(f"skipped: {item}")
    print(f"report: {args.output}/report.md, {args.output}/report.html")
    return 0
