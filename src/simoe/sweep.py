"""`simoe sweep`: SIMoE over a grid of target sparsity tau and orthogonality weight beta
(paper Table 5), each cell trained and evaluated, one table with ROUGE-L and mean overlap."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from .evaluation.run import EvalJob, evaluate
from .runtime import atomic_write_json, atomic_write_text
from .training import TrainJob, train


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--{name}: expected comma-separated numbers, got {text!r}") from err
    if not values:
        raise ValueError(f"--{name}: no values")
    return values


def run_sweep(args: argparse.Namespace) -> str:
    """Train + evaluate every (tau, beta) cell under ``args.output``; returns the table."""
    taus, betas = _floats(args.sparsity, "sparsity"), _floats(args.ortho, "ortho")
    root = Path(args.output)
    fields = {f.name for f in dataclasses.fields(TrainJob)} - {"sparsity", "ortho", "output",
                                                             "resume"}
    base = {k: v for k, v in vars(args).items() if k in fields}
    cells: dict[str, dict[str, float]] = {}
    for tau in taus:
        for beta in betas:
            name = f"tau{tau:g}_beta{beta:g}"
            run = train(TrainJob(**base, sparsity=tau, ortho=beta, output=str(root / name),
                                 resume=False if base.get("overwrite") else "auto"))
            metrics = evaluate(EvalJob(model=str(run), data=args.data, output=str(run / "eval"),
                                       split=args.eval_split, max_instances=args.max_instances,
                                       batch_size=args.batch_size,
                                       max_source_len=args.max_source_len,
                                       max_new_tokens=args.max_new_tokens))
            stats = json.loads((run / "final_stats.json").read_text())
            cells[name] = {"tau": tau, "beta": beta, "rougeL": metrics["overall"]["rougeL"],
                           "mean_overlap": stats["mean_overlap"],
                           "sparsity": stats["sparsity"]["mean"]}
    lines = ["ROUGE-L / mean expert overlap (%) / final sparsity per cell (paper Table 5).", "",
             "| tau ↓ beta → | " + " | ".join(f"{b:g}" for b in betas) + " |",
             "|---" + "|---:" * len(betas) + "|"]
    for tau in taus:
        row = [cells[f"tau{tau:g}_beta{b:g}"] for b in betas]
        lines.append(f"| {tau:g} | " + " | ".join(
            f"{c['rougeL']:.2f} / {100 * c['mean_overlap']:.1f}% / {c['sparsity']:.3f}"
            for c in row) + " |")
    table = "\n".join(lines) + "\n"
    atomic_write_json(root / "sweep.json", cells)
    atomic_write_text(root / "sweep.md", table)
    return table
