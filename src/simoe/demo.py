"""`simoe demo`: the whole SIMoE story offline, on the embedded default.

1. write the synthetic instruction benchmark (SNI task format, category-level split);
2. pre-train a small Llama on instruction-free text from the same generator (cached);
3. instruction-tune SIMoE, full fine-tuning, LoRA and sparse upcycling with equal budgets;
4. evaluate every model (and the untuned base) on unseen and on seen categories;
5. print the `simoe report` tables and write them with the `simoe analyze` figures.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .analysis import analyze
from .evaluation import EvalJob, comparison_report, evaluate
from .runtime import atomic_write_json, atomic_write_text
from .synthetic import SEEN_SPLIT, TEST_SPLIT, pretrain_base, write_benchmark
from .training import TrainJob, train

logger = logging.getLogger(__name__)

METHODS = ("simoe", "full", "lora", "upcycle")


@dataclass(frozen=True)
class DemoProfile:
    """Sizes of one demo: the pre-trained base, the benchmark and the shared training budget."""

    instances_per_task: int
    pretrain_steps: int
    hidden_size: int
    layers: int
    intermediate: int
    steps: int
    batch_size: int
    gate_lr: float
    lambda_lr: float
    lr: float
    eval_instances: int
    max_source_len: int = 384
    max_target_len: int = 32


FULL = DemoProfile(instances_per_task=60, pretrain_steps=1500,
                   hidden_size=128, layers=4, intermediate=352, steps=150, batch_size=16,
                   gate_lr=0.1, lambda_lr=0.02, lr=1e-3, eval_instances=10)
QUICK = DemoProfile(instances_per_task=12, pretrain_steps=60,
                    hidden_size=64, layers=2, intermediate=176, steps=16, batch_size=8,
                    gate_lr=0.3, lambda_lr=0.5, lr=1e-3, eval_instances=2, max_source_len=256,
                    max_target_len=16)


def run_demo(output: str | Path = "runs/demo", quick: bool = False, seed: int = 0
             ) -> dict[str, Any]:
    """Run the demo into ``output``; returns the summary also written to summary.json."""
    start = time.time()
    profile = QUICK if quick else FULL
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def tick(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 1)
        print(f"[demo] {name}: {timings[name]:.0f}s", flush=True)

    t0 = time.time()
    data = write_benchmark(out / "data", seed=seed,
                           instances_per_task=profile.instances_per_task)
    tick("benchmark", t0)

    t0 = time.time()
    base = pretrain_base(out / ("base-quick" if quick else "base"), seed=seed,
                         max_steps=profile.pretrain_steps,
                         hidden_size=profile.hidden_size, layers=profile.layers,
                         intermediate=profile.intermediate)
    tick("pre-training (cached on reruns)", t0)

    common = dict(model=str(base), data=str(data), max_steps=profile.steps,
                  batch_size=profile.batch_size, max_source_len=profile.max_source_len,
                  max_target_len=profile.max_target_len, seed=seed, lr=profile.lr,
                  lora_lr=profile.lr, gate_lr=profile.gate_lr, lambda_lr=profile.lambda_lr,
                  logging_steps=max(1, profile.steps // 10),
                  save_steps=10**6, epochs=1.0, overwrite=True)  # a rerun redoes the demo
    runs: dict[str, Path] = {}
    for method in METHODS:
        t0 = time.time()
        runs[method] = train(TrainJob(output=str(out / "runs" / method), method=method,
                                      **common))
        tick(f"train {method}", t0)

    evals: dict[str, dict[str, Path]] = {TEST_SPLIT: {}, SEEN_SPLIT: {}}
    scores: dict[str, dict[str, float]] = {}
    for name, model in [("base (no tuning)", base), *runs.items()]:
        t0 = time.time()
        slug = name.split()[0]
        for split in (TEST_SPLIT, SEEN_SPLIT):
            ev = out / "eval" / f"{slug}-{split}"
            m = evaluate(EvalJob(model=str(model), data=str(data), output=str(ev), split=split,
                                 max_instances=profile.eval_instances,
                                 max_source_len=profile.max_source_len,
                                 max_new_tokens=profile.max_target_len, batch_size=32))
            evals[split][name] = ev
            scores.setdefault(name, {})[split] = m["overall"]["rougeL"]
        tick(f"evaluate {name}", t0)

    t0 = time.time()
    unseen = comparison_report(list(evals[TEST_SPLIT].values()), list(evals[TEST_SPLIT]))
    seen = comparison_report(list(evals[SEEN_SPLIT].values()), list(evals[SEEN_SPLIT]))
    figures = analyze(list(runs.values()), list(evals[TEST_SPLIT].values())[1:],
                      out / "analysis", names=list(runs))
    simoe_stats = json.loads((runs["simoe"] / "final_stats.json").read_text())
    tick("report and figures", t0)

    summary = {
        "profile": "quick" if quick else "full",
        "profile_settings": asdict(profile),
        "rougeL": scores,
        "simoe_sparsity": simoe_stats["sparsity"]["union"],  # what is stored (the constraint)
        "simoe_sparsity_mean": simoe_stats["sparsity"]["mean"],
        "target_sparsity": simoe_stats["target_sparsity"],
        "timings_s": timings,
        "wall_time_s": round(time.time() - start, 1),
        "figures_skipped": figures.get("skipped", []),
    }
    text = (f"# SIMoE demo ({summary['profile']})\n\n"
            f"## Unseen categories (split `{TEST_SPLIT}`)\n\n{unseen}\n"
            f"## Seen categories (split `{SEEN_SPLIT}`, held-out instances)\n\n{seen}\n"
            f"SIMoE union sparsity {summary['simoe_sparsity']:.3f} "
            f"(target {summary['target_sparsity']}; mean over experts "
            f"{summary['simoe_sparsity_mean']:.3f}); wall time {summary['wall_time_s']:.0f}s. "
            f"Figures: `analysis/report.html`.\n")
    atomic_write_text(out / "report.md", text)
    atomic_write_json(out / "summary.json", summary)
    print(text, flush=True)
    return summary
