"""SIMoE training dynamics: does a run land on its target, keep every expert alive and used,
route categories apart, and does beta set the overlap? (issue: SIMoE that trains like the paper)

    python benchmarks/dynamics.py --model ../shared/models/stories260K \
        --data ../shared/data/sni-mini --output runs/dynamics --steps 300 \
        --taus 0.5,0.75,0.9 --betas 0,5e-6,5e-5,5e-4 --seeds 0,1

Trains one run per (tau, beta, seed) point needed -- the tau sweep at the default beta, the beta
sweep at tau = 0.75, the seeds at the defaults -- reusing finished runs (resumable: rerun the
same command), then prints one row per run and writes dynamics.json + dynamics.md:

- union / mean / per-expert sparsity and whether the union lands in [tau - 0.01, tau + 0.03];
- every expert's mean routing weight over the training prompts (>= 1/(4M)?) and density (> 0?);
- the between/within-category variance ratio of alpha over the training prompts;
- mean pairwise overlap (Jaccard of the experts' kept parameters);
- for two seeds: the Jaccard of their kept-column sets and its chance level for random masks
  of the same densities, p q / (p + q - p q).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from simoe import SIMoEModel
from simoe.data import load_examples
from simoe.training import TrainJob, train


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def run_name(tau: float, beta: float, seed: int) -> str:
    return f"tau{tau:g}_beta{beta:g}_seed{seed}"


def ensure_run(args: argparse.Namespace, tau: float, beta: float, seed: int) -> Path:
    out = Path(args.output) / run_name(tau, beta, seed)
    if (out / "final_stats.json").is_file():
        return out
    job = TrainJob(model=args.model, data=args.data, output=str(out), sparsity=tau, ortho=beta,
                   seed=seed, max_steps=args.steps, batch_size=args.batch_size,
                   max_source_len=args.max_source_len, max_target_len=args.max_target_len,
                   max_instances_per_task=args.instances, logging_steps=args.logging_steps,
                   save_steps=max(args.steps // 4, 10), resume="auto", **args.job_kw)
    start = time.time()
    train(job)
    print(f"trained {out.name} in {time.time() - start:.0f} s", flush=True)
    return out


@torch.no_grad()
def routing_over_training_prompts(run: Path, data: str, instances: int) -> dict[str, object]:
    """alpha of every training prompt (from the run's routing cache through its router), mean
    per expert, and the between/within-category variance ratio."""
    model = SIMoEModel.from_pretrained(run)
    caches = sorted((run / "routing_cache").glob("*.safetensors"))
    emb = load_file(caches[0])["embeddings"]
    alpha = model.router(emb.to(model.device)).float()  # [N, M]
    examples = load_examples(data, "train", max_instances_per_task=instances)
    cats = [ex.category or ex.task for ex in examples]
    if len(cats) != alpha.shape[0]:
        raise RuntimeError(f"{run}: {alpha.shape[0]} cached prompts, {len(cats)} examples")
    mean = alpha.mean(0)
    by_cat: dict[str, list[int]] = {}
    for i, c in enumerate(cats):
        by_cat.setdefault(c, []).append(i)
    cat_means = torch.stack([alpha[idx].mean(0) for idx in by_cat.values()])  # [C, M]
    between = float(((cat_means - mean) ** 2).sum(1).mean())
    within = statistics.fmean(float(((alpha[idx] - alpha[idx].mean(0)) ** 2).sum(1).mean())
                              for idx in by_cat.values())
    return {"alpha_mean": mean.tolist(), "categories": len(by_cat),
            "between_within": between / within if within > 0 else float("inf")}


def kept_columns(run: Path) -> tuple[dict[str, set[int]], dict[str, int], int]:
    """Union-kept column indices per gated tensor, parameters per gate, and D (all gated)."""
    state = load_file(run / "simoe_model.safetensors")
    kept, rows = {}, {}
    for key, idx in state.items():
        if key.endswith(".live_idx"):
            name = key[: -len(".live_idx")]
            delta = state[f"{name}.delta"]
            kept[name] = set(idx.tolist())
            rows[name] = delta.shape[0] if delta.dim() == 2 else 1
    total = json.loads((run / "final_stats.json").read_text())["parameter_counts"]
    return kept, rows, total["targeted_base"]


def seed_jaccard(a: Path, b: Path) -> dict[str, float]:
    ka, rows, d = kept_columns(a)
    kb, _, _ = kept_columns(b)
    inter = sum(len(ka[n] & kb[n]) * rows[n] for n in ka)
    union = sum(len(ka[n] | kb[n]) * rows[n] for n in ka)
    p = sum(len(ka[n]) * rows[n] for n in ka) / d
    q = sum(len(kb[n]) * rows[n] for n in kb) / d
    chance = p * q / (p + q - p * q) if p + q > 0 else 0.0
    return {"jaccard": inter / union if union else 1.0, "chance": chance, "density_a": p,
            "density_b": q}


def summarise(run: Path, args: argparse.Namespace) -> dict[str, object]:
    stats = json.loads((run / "final_stats.json").read_text())
    tau = stats["target_sparsity"]
    sp = stats["sparsity"]
    routing = routing_over_training_prompts(run, args.data, args.instances)
    m = len(sp["per_expert"])
    alpha = routing["alpha_mean"]
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "run": run.name, "tau": tau, "beta": stats["ablation"]["ortho"],
        "union": sp["union"], "mean": sp["mean"], "per_expert": sp["per_expert"],
        "lands": tau - 0.01 <= sp["union"] <= tau + 0.03,
        "alpha_mean": alpha, "min_alpha": min(alpha), "all_used": min(alpha) >= 1 / (4 * m),
        "all_alive": max(sp["per_expert"]) < 1.0,
        "between_within": routing["between_within"], "mean_overlap": stats["mean_overlap"],
        "entropy_last": rows[-1].get("routing_entropy") if rows else None,
        "nll_last": rows[-1].get("nll") if rows else None, "steps": stats["steps"],
        "wall_time_s": stats["wall_time_s"],
    }


def markdown(rows: list[dict], seeds: dict | None, model: str, data: str) -> str:
    lines = [f"SIMoE dynamics on `{model}` / `{data}`", "",
             "| run | tau | beta | union | lands | mean | per-expert sparsity | min mean alpha "
             "| between/within | overlap | entropy | NLL |",
             "|---|---:|---:|---:|:-:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        pe = " ".join(f"{s:.2f}" for s in r["per_expert"])
        lines.append(
            f"| {r['run']} | {r['tau']:g} | {r['beta']:g} | {r['union']:.3f} | "
            f"{'yes' if r['lands'] else 'NO'} | {r['mean']:.3f} | {pe} | {r['min_alpha']:.3f}"
            f"{'' if r['all_used'] else ' (unused)'} | {r['between_within']:.2f} | "
            f"{r['mean_overlap']:.3f} | {r['entropy_last'] or float('nan'):.2f} | "
            f"{r['nll_last'] or float('nan'):.3f} |")
    if seeds:
        lines += ["", f"Kept-column Jaccard between seeds: {seeds['jaccard']:.3f} "
                      f"(chance for random masks of densities {seeds['density_a']:.3f} and "
                      f"{seeds['density_b']:.3f}: {seeds['chance']:.3f})"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--output", default="runs/dynamics")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-source-len", type=int, default=1024)
    p.add_argument("--max-target-len", type=int, default=128)
    p.add_argument("--instances", type=int, default=100, help="instances per task")
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--taus", default="0.5,0.75,0.9")
    p.add_argument("--betas", default="0,5e-6,5e-5,5e-4")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--default-beta", type=float, default=TrainJob.ortho)
    p.add_argument("--job", default="{}", help="extra TrainJob fields as JSON")
    args = p.parse_args(argv)
    args.job_kw = json.loads(args.job)
    taus, betas = _floats(args.taus), _floats(args.betas)
    seeds = [int(s) for s in _floats(args.seeds)]
    points = [(t, args.default_beta, seeds[0]) for t in taus]
    points += [(0.75, b, seeds[0]) for b in betas]
    points += [(0.75, args.default_beta, s) for s in seeds[1:]]
    points = list(dict.fromkeys(points))
    runs = [ensure_run(args, *pt) for pt in points]
    rows = [summarise(r, args) for r in runs]
    seed_runs = [Path(args.output) / run_name(0.75, args.default_beta, s) for s in seeds[:2]]
    seeds_cmp = seed_jaccard(*seed_runs) if len(seeds) >= 2 else None
    out = Path(args.output)
    (out / "dynamics.json").write_text(json.dumps({"runs": rows, "seeds": seeds_cmp}, indent=2))
    text = markdown(rows, seeds_cmp, args.model, args.data)
    (out / "dynamics.md").write_text(text)
    print(text)
    print(f"written: {out / 'dynamics.md'}, {out / 'dynamics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
