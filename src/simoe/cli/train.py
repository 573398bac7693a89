"""`simoe` train and sweep: the subcommands that train runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import FORMATTER


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="upcycle a model into SIMoE by instruction tuning",
                       formatter_class=FORMATTER,
                       description="Train SIMoE; defaults follow the paper's Table 6 (SNI). "
                                   "A non-empty --output needs --resume or --overwrite.")
    _train_flags(p)
    p.set_defaults(func=_run_train)


def _train_flags(p: argparse.ArgumentParser) -> None:
    from ..training import METHODS, TrainJob

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
    t.add_argument("--compact-margin", type=float, default=d.compact_margin,
                   help="live compaction removes a column once every expert's gate logit is "
                        "this far below the closing threshold (0: as soon as all are closed; "
                        "larger: later, leaving closed gates time to reopen; with "
                        "--gate-mode stochastic keep it large: a gate at the threshold is "
                        "sampled open half the time)")
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
    from ..training import FINAL_STATS_NAME, TrainJob, train
    from ..training.methods import unused_settings

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


def add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train and evaluate SIMoE over a grid of tau and beta",
                       formatter_class=FORMATTER, conflict_handler="resolve",
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
    from ..sweep import run_sweep

    table = run_sweep(args)
    print(table)
    return 0
