"""SIMoE against every baseline and the four Table 4 ablations, at equal budgets.

    python benchmarks/compare_methods.py --output runs/compare [--steps 300] [--model ...]

Defaults: the real stories260K Llama and the sni-mini slice from ../shared, the same data,
batches, steps and evaluation for every row. Writes one run and one eval directory per row,
`table.md` (paper Table 1 layout, via `simoe report`) and `parameters.md` (Table 8 style).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from simoe.evaluation import EvalJob, comparison_report, evaluate
from simoe.training import TrainJob, train

SHARED = Path(__file__).resolve().parents[2] / "shared"

ROWS = {
    "simoe": {},
    "full": {"method": "full"},
    "lora": {"method": "lora"},
    "upcycle": {"method": "upcycle"},
    "btx": {"method": "btx"},
    "(a) ffn only": {"targets": "ffn"},
    "(b) no ortho": {"ortho": 0.0},
    "(c) no sparsity": {"sparsity_constraint": False},
    "(d) token routing": {"routing": "token"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="runs/compare")
    p.add_argument("--model", default=str(SHARED / "models" / "stories260K"))
    p.add_argument("--data", default=str(SHARED / "data" / "sni-mini"))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-source-len", type=int, default=320)
    p.add_argument("--max-target-len", type=int, default=64)
    p.add_argument("--gate-lr", type=float, default=0.05)
    p.add_argument("--eval-instances", type=int, default=10)
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of rows")
    args = p.parse_args()
    out = Path(args.output)
    common = dict(model=args.model, data=args.data, max_steps=args.steps,
                  batch_size=args.batch_size, max_source_len=args.max_source_len,
                  max_target_len=args.max_target_len, gate_lr=args.gate_lr, logging_steps=20,
                  save_steps=10**6)
    names, evals, params = [], [], []
    for name in args.rows.split(","):
        slug = name.replace(" ", "_").replace("(", "").replace(")", "")
        start = time.time()
        run = train(TrainJob(output=str(out / slug), resume="auto", **common, **ROWS[name]))
        ev = out / f"{slug}-eval"
        evaluate(EvalJob(model=str(run), data=args.data, output=str(ev),
                         max_instances=args.eval_instances, max_source_len=args.max_source_len,
                         max_new_tokens=args.max_target_len, batch_size=32))
        stats = json.loads((run / "final_stats.json").read_text())
        c = stats["parameter_counts"]
        params.append(f"| {name} | {c['trainable']:,} | {c['total_stored']:,} | "
                      f"{c['active_per_token']:,} | {stats['peak_memory_mb']:.0f} | "
                      f"{stats['wall_time_s']:.0f} |")
        names.append(name)
        evals.append(ev)
        print(f"{name}: {time.time() - start:.0f}s", flush=True)
    table = comparison_report(evals, names)
    (out / "table.md").write_text(table)
    header = ("| run | trainable | stored | active / token | peak RSS (MB) | wall (s) |\n"
              "|---|---:|---:|---:|---:|---:|\n")
    (out / "parameters.md").write_text(header + "\n".join(params) + "\n")
    print(table)
    print(header + "\n".join(params))


if __name__ == "__main__":
    main()
