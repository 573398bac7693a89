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
from pathlib import Path

from .data import DataError

_FORMATTER = argparse.ArgumentDefaultsHelpFormatter
# Errors a user can fix (ModelLoadError is a ValueError; FileNotFoundError, PermissionError,
# FileExistsError and the Hub's "not a valid model identifier" are OSErrors).
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, ValueError, OSError)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_debug(p: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    p.add_argument("--debug", action="store_true", default=default,
                   help="print the traceback of an error (also: SIMOE_DEBUG=1)")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="upcycle a model into SIMoE by instruction tuning",
                       formatter_class=_FORMATTER,
                       description="Train SIMoE; defaults follow the paper's Table 6 (SNI). "
                                   "A non-empty --output needs --resume or --overwrite.")
    _train_flags(p)
    p.set_defaults(func=_run_train)


def _train_flags(p: argparse.ArgumentParser) -> None:
    from .training import METHODS, TrainJob

    d = TrainJob(model="", data="", output="")
    p.add_argument("--model", required=True, help="base model: hub id or local path")
    p.add_argument("--data", required=True,
                   help="SNI-style directory, JSONL (prompt/completion or messages), or a "
                        "Hugging Face dataset name/path")
    p.add_argument("--output", required=True, help="run directory")
    p.add_argument("--method", choices=list(METHODS),
                   default=d.method, help="SIMoE or a baseline, same data and schedule")
    g = p.add_argument_group("SIMoE")
    g.add_argument("--experts", type=int, default=d.experts, help="experts M")
    g.add_argument("--sparsity", type=float, default=d.sparsity, help="target sparsity tau")
    g.add_argument("--ortho", type=float, default=d.ortho, help="orthogonality weight beta")
    g.add_argument("--routing", choices=["instance", "token", "task"], default=d.routing,
                   help="routing level (ablation d: token)")
    g.add_argument("--gate-mode", choices=["deterministic", "stochastic"], default=d.gate_mode,
                   help="median gate (paper) or sampled hard-concrete gate in training")
    g.add_argument("--constraint", default=d.constraint,
                   help="which sparsity tau bounds: union (gated off for every expert = what "
                        "is pruned, stored and activated), mean (over experts) or per-expert "
                        "(one multiplier per expert)")
    g.add_argument("--sparsity-warmup", type=float, default=d.sparsity_warmup,
                   help="fraction of the steps by which the target has ramped up to tau")
    g.add_argument("--balance", type=float, default=d.balance,
                   help="weight of log M - H(batch-mean alpha), keeps every expert in use")
    g.add_argument("--sparsity-hold", type=float, default=d.sparsity_hold,
                   help="fraction of the steps before any sparsity/orthogonality pressure")
    g.add_argument("--ortho-form", default=d.ortho_form,
                   help="offdiag: beta * N * sum_{i!=j} <z_i, z_j>_w / D (overlap between "
                        "experts, size-free); literal: ||ZZ^T - I||_F as printed")
    g.add_argument("--no-routing-cache", dest="routing_cache", action="store_false",
                   help="re-run the routing pass every step instead of caching embeddings")
    g.add_argument("--targets", choices=["all", "ffn"], default=d.targets,
                   help="upcycle every linear and norm, or only FFN linears (ablation a)")
    g.add_argument("--no-sparsity-constraint", dest="sparsity_constraint",
                   action="store_false",
                   help="free real-valued masks, no constraint, no pruning (ablation c)")
    b = p.add_argument_group("baselines")
    b.add_argument("--lora-r", type=int, default=d.lora_r, help="LoRA rank")
    b.add_argument("--lora-alpha", type=int, default=d.lora_alpha, help="LoRA alpha")
    b.add_argument("--lora-lr", type=float, default=d.lora_lr, help="LoRA learning rate")
    b.add_argument("--moe-experts", type=int, default=d.moe_experts,
                   help="experts of the upcycled / BTX Mixtral (BTX: domains + base)")
    b.add_argument("--moe-top-k", type=int, default=d.moe_top_k, help="experts per token")
    b.add_argument("--domains", default=d.domains,
                   help="BTX: JSON file mapping category -> domain (default: built-in SNI map)")
    t = p.add_argument_group("training")
    t.add_argument("--lr", type=float, default=d.lr, help="Adam lr of the shared deltas")
    t.add_argument("--gate-lr", type=float, default=d.gate_lr, help="Adam lr of the gates")
    t.add_argument("--gate-second-moment", choices=["row", "element"],
                   default=d.gate_second_moment,
                   help="gates' Adam second moment: shared per expert row (gates move in "
                        "proportion to their force) or per element (plain Adam)")
    t.add_argument("--gate-beta1", type=float, default=d.gate_beta1,
                   help="Adam's momentum for the gates (0: a gate stops as soon as lambda is "
                        "reset, so closing does not overshoot the target)")
    t.add_argument("--no-live-compaction", dest="live_compaction", action="store_false",
                   help="keep every column until the end instead of removing the ones all "
                        "experts closed long ago during training")
    t.add_argument("--router-lr", type=float, default=d.router_lr, help="Adam lr of the router")
    t.add_argument("--lambda-lr", type=float, default=d.lambda_lr, help="dual ascent step")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="per-device batch")
    t.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="gradient accumulation steps")
    t.add_argument("--epochs", type=float, default=d.epochs, help="training epochs")
    t.add_argument("--max-steps", type=int, default=d.max_steps, help="overrides --epochs if > 0")
    t.add_argument("--max-source-len", type=int, default=d.max_source_len,
                   help="prompt tokens (longer prompts lose tokens on the left)")
    t.add_argument("--max-target-len", type=int, default=d.max_target_len,
                   help="completion tokens, EOS included")
    t.add_argument("--num-pos-examples", type=int, default=d.num_pos_examples,
                   help="SNI: positive examples in the prompt")
    t.add_argument("--max-instances-per-task", type=int, default=d.max_instances_per_task,
                   help="SNI: instances per task")
    t.add_argument("--seed", type=int, default=d.seed, help="seed of init and data order")
    t.add_argument("--bf16", action="store_true", help="base model and compute in bfloat16")
    t.add_argument("--gradient-checkpointing", action="store_true")
    t.add_argument("--logging-steps", type=int, default=d.logging_steps,
                   help="log vital signs every N optimiser steps")
    t.add_argument("--save-steps", type=int, default=d.save_steps,
                   help="checkpoint every N steps")
    t.add_argument("--resume", nargs="?", const=True, default=False,
                   help="resume from the newest complete checkpoint in --output (or the one "
                        "given), with the hyper-parameters recorded in its job.json")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run in a non-empty --output (refused otherwise)")
    t.add_argument("--skip-invalid", action="store_true",
                   help="skip malformed records (and report how many) instead of failing")


def _run_train(args: argparse.Namespace) -> int:
    from .training import FINAL_STATS_NAME, TrainJob, train
    from .training.methods import unused_settings

    fields = TrainJob.__dataclass_fields__
    job = TrainJob(**{k: v for k, v in vars(args).items() if k in fields})
    unused = unused_settings(job)
    if unused:
        raise ValueError(f"--method {job.method} does not use {', '.join(unused)}; drop "
                         f"{'it' if len(unused) == 1 else 'them'} or choose the method that "
                         "uses them")
    finished = bool(job.resume) and (Path(job.output) / FINAL_STATS_NAME).is_file()
    out = train(job)
    if finished:  # train() said so in one log line; nothing was trained
        return 0
    print(f"run directory: {out}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from .evaluation.run import EvalJob

    d = EvalJob(model="", data="", output="")
    p = sub.add_parser("eval", help="generate and score ROUGE-L per task and category",
                       formatter_class=_FORMATTER)
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
    p.add_argument("--base-model", default=None,
                   help="SIMoE run: load this base model instead of the path the run recorded "
                        "(when the base has moved; its files must match the recorded "
                        "fingerprint)")
    p.set_defaults(func=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from .evaluation.run import EvalJob, evaluate

    fields = EvalJob.__dataclass_fields__
    metrics = evaluate(EvalJob(**{k: v for k, v in vars(args).items() if k in fields}))
    o = metrics["overall"]
    print(f"ROUGE-L {o['rougeL']:.2f} (exact match {o['exact_match']:.2f}) over "
          f"{o['categories']} categories, {o['tasks']} tasks, {o['n']} instances -> {args.output}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="merge evaluation directories into one Table-1-style table",
                       formatter_class=_FORMATTER)
    p.add_argument("eval_dirs", nargs="+", help="directories written by `simoe eval`")
    p.add_argument("--output", required=True, help="markdown file to write")
    p.add_argument("--names", default=None, help="comma-separated row names (default: dir names)")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from .evaluation.run import comparison_report
    from .runtime import check_output_file

    names = args.names.split(",") if args.names else None
    if names and len(names) != len(args.eval_dirs):
        raise ValueError(f"--names has {len(names)} names for {len(args.eval_dirs)} directories")
    out = check_output_file(args.output)
    text = comparison_report(args.eval_dirs, names)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train and evaluate SIMoE over a grid of tau and beta",
                       formatter_class=_FORMATTER, conflict_handler="resolve",
                       description="Paper Table 5: ROUGE-L and mean expert overlap per cell.")
    _train_flags(p)
    p.add_argument("--sparsity", default="0.5,0.75,0.9", help="comma-separated target sparsities")
    p.add_argument("--ortho", default="0,5e-6,5e-5,5e-4",
                   help="comma-separated orthogonality weights")
    p.add_argument("--eval-split", default="test", help="split evaluated after each run")
    p.add_argument("--max-instances", type=int, default=100, help="eval instances per task")
    p.add_argument("--max-new-tokens", type=int, default=128, help="eval generation budget")
    p.set_defaults(func=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_sweep

    table = run_sweep(args)
    print(table)
    return 0


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="figures and report for one or several runs",
                       formatter_class=_FORMATTER,
                       description="Expert overlap, kept capacity, routing dendrogram, training "
                                   "curves and (several runs) parameter/memory comparison.")
    p.add_argument("runs", nargs="+", help="run directories written by `simoe train`")
    p.add_argument("--eval", dest="eval_dirs", nargs="*", default=[],
                   help="evaluation directories (routing figures need SIMoE predictions)")
    p.add_argument("--output", required=True, help="directory for PNGs, report.md, report.html")
    p.add_argument("--names", default=None, help="comma-separated run names")
    p.set_defaults(func=_run_analyze)


def _run_analyze(args: argparse.Namespace) -> int:
    from .analysis import analyze
    from .runtime import check_output_dir

    names = args.names.split(",") if args.names else None
    check_output_dir(args.output)
    summary = analyze(args.runs, args.eval_dirs, args.output, names=names)
    for item in summary.get("skipped", []):
        print(f"skipped: {item}")
    print(f"report: {args.output}/report.md, {args.output}/report.html")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="merge a SIMoE run at a fixed alpha into a plain "
                                      "transformers checkpoint", formatter_class=_FORMATTER)
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
    from .serving import export_run

    done = export_run(args.run, args.output, alpha=args.alpha, dtype=args.dtype,
                      base_model=args.base_model, overwrite=args.overwrite)
    print(f"exported at alpha [{', '.join(f'{a:.4f}' for a in done.alpha)}] -> {done.path}")
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="greedy answers, each routed on its own prompt",
                       formatter_class=_FORMATTER)
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
    from .serving import generate_run

    generate_run(args.run, prompt=args.prompt, file=args.file, chat=args.chat,
                 max_new_tokens=args.max_new_tokens, output=args.output,
                 base_model=args.base_model)
    return 0


def _add_lm_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lm-eval", help="lm-evaluation-harness tasks on a run (needs simoe[eval])",
        formatter_class=_FORMATTER,
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
        from .serving.lm_eval_model import main as lm_eval_main
    except ImportError as err:
        raise ValueError(str(err)) from None  # the extra is missing: a user error
    lm_eval_main(["--model", "simoe", "--model_args", model_args, *rest])
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole SIMoE story offline on the embedded default",
                       formatter_class=_FORMATTER)
    p.add_argument("--output", default="runs/demo", help="demo directory (the base is cached)")
    p.add_argument("--quick", action="store_true", help="the same pipeline in under 2 minutes")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output, quick=args.quick, seed=args.seed)
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="data utilities", formatter_class=_FORMATTER)
    data_sub = p.add_subparsers(dest="data_command", required=True)
    s = data_sub.add_parser("synth", help="write the embedded synthetic benchmark (SNI format)",
                            formatter_class=_FORMATTER)
    s.add_argument("--output", required=True, help="benchmark directory")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--instances-per-task", type=int, default=60)
    s.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from .synthetic import write_benchmark

    path = write_benchmark(args.output, seed=args.seed,
                           instances_per_task=args.instances_per_task)
    print(f"benchmark written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="simoe", formatter_class=_FORMATTER,
                     description="Sparse Interpolated Mixture-of-Experts",
                     epilog="exit codes: 0 done, 2 user error (one line on stderr), "
                            "1 internal error, 130 interrupted")
    _add_debug(parser, default=False)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_eval(sub)
    _add_report(sub)
    _add_sweep(sub)
    _add_analyze(sub)
    _add_export(sub)
    _add_generate(sub)
    _add_lm_eval(sub)
    _add_demo(sub)
    _add_data(sub)
    for p in list(sub.choices.values()):
        _add_debug(p)
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


if __name__ == "__main__":
    sys.exit(main())
