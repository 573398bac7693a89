"""Compare evaluations made by different `paper_tables.py` outputs (or `simoe eval` runs):
average ROUGE-L over the unseen categories with 95% bootstrap intervals, and each row's paired
difference to a reference row, over the tasks every evaluation shares.

    python benchmarks/compare_evals.py --ref full \
        full=runs/pt128/evals/full simoe=runs/pt128/evals/simoe \
        "simoe (32 steps)=benchmarks/results/paper_tables/evals/simoe"

Each argument is ``LABEL=DIR`` where DIR holds an evaluation's ``metrics.json``. The statistics
are paper_tables.py's own (same bootstrap: tasks resampled within each category, the same draws
for every row), so a row compared here reads like a row of its tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from paper_tables import bootstrap, interval, paired_delta

from simoe.evaluation.run import read_metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="+", help="LABEL=DIR (an evaluation directory)")
    p.add_argument("--ref", default=None, help="the label differences are taken to")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    per_task = {}
    for item in args.rows:
        label, sep, directory = item.partition("=")
        if not sep or not label:
            p.error(f"{item!r}: expected LABEL=DIR")
        if label in per_task:
            p.error(f"label {label!r} given twice")
        if not (Path(directory) / "metrics.json").is_file():
            p.error(f"{directory}: no metrics.json (not a finished evaluation)")
        per_task[label] = read_metrics(Path(directory))["per_task"]
    ref = args.ref or next(iter(per_task))
    if ref not in per_task:
        p.error(f"--ref {ref!r} is not one of the labels {list(per_task)}")
    boot = bootstrap(per_task, args.resamples, args.seed)
    print(f"{len(boot['tasks'])} tasks shared by every row, {len(boot['categories'])} "
          f"categories; {args.resamples} resamples, seed {args.seed}\n")
    print(f"| row | Avg. | 95% CI | Δ vs {ref} | 95% CI of Δ |")
    print("|---|---:|---:|---:|---:|")
    for i, row in enumerate(boot["rows"]):
        lo, hi = interval(boot["avg_samples"][i])
        cells = [f"{boot['avg_point'][i]:.1f}", f"[{lo:.1f}, {hi:.1f}]"]
        if row == ref:
            cells += ["–", "–"]
        else:
            d, dlo, dhi = paired_delta(boot, row, ref)
            cells += [f"{d:+.1f}", f"[{dlo:+.1f}, {dhi:+.1f}]"]
        print(f"| {row} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
