"""What a run says: the run and eval directories read into a `Run`, kept capacity (from the
checkpoint, else final_stats.json), mean alpha per task, costs and vital signs. No rendering.

Inputs (see simoe.training.run / simoe.evaluation.run): a run directory has final_stats.json
and metrics.jsonl (and, for SIMoE, simoe_config.json + simoe_model.safetensors); an eval
directory has metrics.json and predictions.jsonl (with 'alpha' per instance for SIMoE with
instance or task routing). Missing keys are tolerated: callers get None and say why.
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .layer_types import classify, type_order

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike

FINAL_STATS = "final_stats.json"
METRICS_LOG = "metrics.jsonl"
EVAL_METRICS = "metrics.json"
PREDICTIONS = "predictions.jsonl"
SIMOE_CONFIG = "simoe_config.json"
SIMOE_WEIGHTS = "simoe_model.safetensors"
NO_EVAL = "no eval directory for this run (pass --eval EVAL_DIR)"


# ---------------------------------------------------------------------------------- files
def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            logger.warning("%s line %d is not JSON (%s); ignored", path, i, err)
    return rows


# ---------------------------------------------------------------------------------- inputs
@dataclass
class Run:
    """One run directory and, if paired, its evaluation."""

    path: Path
    name: str
    stats: dict[str, Any]
    metrics: list[dict[str, Any]]
    eval_dir: Path | None = None
    eval_metrics: dict[str, Any] | None = None
    predictions: list[dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return str(self.stats.get("method", "simoe" if (self.path / SIMOE_CONFIG).is_file()
                                  else "unknown"))


def load_run(path: StrPath, name: str | None = None) -> Run:
    """Read final_stats.json and metrics.jsonl (either may be missing, not both)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: not a run directory")
    stats_file, log_file = path / FINAL_STATS, path / METRICS_LOG
    if not stats_file.is_file() and not log_file.is_file():
        raise FileNotFoundError(f"{path}: neither {FINAL_STATS} nor {METRICS_LOG}; is it a run "
                                "directory written by `simoe train`?")
    run = Run(path=path, name=name or path.resolve().name,
              stats=_read_json(stats_file) if stats_file.is_file() else {},
              metrics=_read_jsonl(log_file) if log_file.is_file() else [])
    if not stats_file.is_file():
        run.notes.append(f"no {FINAL_STATS} (unfinished run?)")
    return run


def load_eval(path: StrPath) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """metrics.json (may be absent) and predictions.jsonl (required) of an eval directory."""
    path = Path(path)
    preds = path / PREDICTIONS
    if not preds.is_file():
        raise FileNotFoundError(f"{path}: no {PREDICTIONS}; run `simoe eval` first")
    metrics = _read_json(path / EVAL_METRICS) if (path / EVAL_METRICS).is_file() else {}
    return metrics, _read_jsonl(preds)


def _same_path(a: str | os.PathLike, b: Path) -> bool:
    try:
        return Path(a).resolve() == b.resolve()
    except OSError:
        return False


def pair_evals(runs: list[Run], eval_dirs: Sequence[StrPath]) -> list[str]:
    """Attach each eval directory to its run: by the model path in metrics.json, else (one run)
    to that run, else by position when there are as many evals as runs. Returns notes."""
    notes = []
    for k, d in enumerate(eval_dirs):
        d = Path(d)
        metrics, preds = load_eval(d)
        model = metrics.get("model")
        target = next((r for r in runs if model and _same_path(model, r.path)), None)
        how = "its metrics.json names this run"
        if target is None and len(runs) == 1:
            target, how = runs[0], "the only run"
        elif target is None and len(eval_dirs) == len(runs):
            target, how = runs[k], "same position on the command line"
        if target is None:
            notes.append(f"eval `{d}` (model {model!r}) matches no run; ignored")
            continue
        if target.eval_dir is not None:
            notes.append(f"eval `{d}` replaces `{target.eval_dir}` for run {target.name}")
        target.eval_dir, target.eval_metrics, target.predictions = d, metrics, preds
        target.notes.append(f"evaluation `{d}` ({how})")
    return notes


# ---------------------------------------------------------------------------------- capacity
def _base_param_sizes(base: str | None) -> tuple[dict[str, int] | None, str]:
    """Parameter name -> numel of the base model, from its config on the meta device (no
    weights are read). (None, why) when the config cannot be found locally."""
    if not base:
        return None, "the run names no base model"
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(base, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return {n: p.numel() for n, p in model.named_parameters(remove_duplicate=False)}, ""
    except Exception as err:  # noqa: BLE001 - optional detail; final_stats.json is the fallback
        return None, f"base model config {base!r} not available locally ({type(err).__name__})"


def _checkpoint_units(run: Run) -> tuple[list[dict[str, Any]] | None, str]:
    """Per gated tensor of the SIMoE checkpoint: kept parameters per expert, union, size."""
    weights, cfg_file = run.path / SIMOE_WEIGHTS, run.path / SIMOE_CONFIG
    if not weights.is_file() or not cfg_file.is_file():
        return None, f"no {SIMOE_WEIGHTS}"
    cfg = _read_json(cfg_file)
    sizes, why = _base_param_sizes(cfg.get("base_model_name_or_path")
                                   or run.stats.get("base_model"))
    from safetensors import safe_open

    from ..gates import gate

    units = []
    with safe_open(str(weights), "pt") as f:
        keys = set(f.keys())
        for key in sorted(keys):
            if not key.endswith(".log_alpha") or key.startswith("router."):
                continue
            pname = key[: -len(".log_alpha")]
            shape = f.get_slice(f"{pname}.delta").get_shape() if f"{pname}.delta" in keys \
                else []
            per_gate = int(shape[0]) if len(shape) == 2 else 1
            alive = gate(f.get_tensor(key), cfg.get("gate_mode", "deterministic"), False) != 0
            units.append({"name": pname, "kept": (alive.sum(dim=1).double() * per_gate).tolist(),
                          "union": float(alive.any(dim=0).sum()) * per_gate,
                          "total": sizes.get(pname) if sizes else None})
    if sizes is not None and any(u["total"] is None for u in units):
        missing = [u["name"] for u in units if u["total"] is None]
        return units, f"base model lacks {missing[:3]}"
    return units, why


def _stats_key(param_name: str) -> str:
    """The key final_stats.json's kept_capacity.by_type uses: leaf, '.bias' for biases."""
    module, _, pname = param_name.rpartition(".")
    leaf = module.rpartition(".")[2]
    return leaf if pname == "weight" else f"{leaf}.{pname}"


def _aggregate(units: list[dict[str, Any]], key: Any) -> dict[str, dict[str, Any]]:
    """Group units ({kept: [M], union, total, raw}) and reduce to mean/std over experts."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for u in units:
        groups[key(u)].append(u)
    out = {}
    for g, members in groups.items():
        total = sum(u["total"] for u in members)
        m = len(members[0]["kept"])
        per_expert = [sum(u["kept"][i] for u in members) / total for i in range(m)]
        out[g] = {"mean": statistics.fmean(per_expert), "std": statistics.pstdev(per_expert),
                  "union": sum(u["union"] for u in members) / total, "parameters": total,
                  "per_expert": per_expert,
                  "raw": sorted({r for u in members for r in u["raw"]})}
    return out


def _depth_sorted(table: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(table.items(), key=lambda kv: (not kv[0].isdigit(),
                                                      int(kv[0]) if kv[0].isdigit() else 0)))


def kept_capacity(run: Run) -> dict[str, Any] | None:
    """Kept capacity by generic layer type and by depth, with the raw names behind each type.

    Sources, best first: the SIMoE checkpoint with the base model's parameter sizes (exact, per
    module, so GPT-2's attention and MLP ``c_proj`` are told apart); the checkpoint with the
    group sizes from final_stats.json; final_stats.json alone (the spread over experts of a
    generic type that merges several raw types is then unknown).
    """
    stats_cap = run.stats.get("kept_capacity") or {}
    units, why = _checkpoint_units(run)
    targeted = (run.stats.get("parameter_counts") or {}).get("targeted_base")
    if units and all(u["total"] is not None for u in units):
        total = sum(u["total"] for u in units)
        if targeted is None or total == targeted:
            for u in units:
                info = classify(u["name"])
                u["raw"] = [_stats_key(u["name"])]
                u["generic"], u["depth"] = info.generic, info.depth
            by_type = _aggregate(units, lambda u: u["generic"])
            by_depth = _aggregate(units, lambda u: "other" if u["depth"] is None
                                  else str(u["depth"]))
            modules = [{"name": u["name"], "generic": u["generic"], "depth": u["depth"],
                        "parameters": u["total"],
                        "mean": statistics.fmean(k / u["total"] for k in u["kept"]),
                        "union": u["union"] / u["total"]} for u in units]
            return {"source": "checkpoint", "by_type": {t: by_type[t] for t in
                                                        type_order(by_type)},
                    "by_depth": _depth_sorted(by_depth), "modules": modules}
        why = f"checkpoint covers {total} parameters, final_stats.json {targeted}"
    if not stats_cap.get("by_type"):
        return None
    st_type, st_depth = stats_cap["by_type"], stats_cap.get("by_depth") or {}
    if units:  # per-expert counts from the checkpoint, group sizes from final_stats.json
        by_key = defaultdict(list)
        by_dkey = defaultdict(list)
        for u in units:
            by_key[_stats_key(u["name"])].append(u)
            d = classify(u["name"]).depth
            by_dkey["other" if d is None else str(d)].append(u)
        if set(by_key) == set(st_type) and set(by_dkey) == set(st_depth):
            def merged(name: str, members: list, total: float) -> dict[str, Any]:
                m = len(members[0]["kept"])
                return {"kept": [sum(u["kept"][i] for u in members) for i in range(m)],
                        "union": sum(u["union"] for u in members), "total": total,
                        "raw": [name]}
            type_units = [merged(k, v, st_type[k]["parameters"]) for k, v in by_key.items()]
            depth_units = [merged(k, v, st_depth[k]["parameters"]) for k, v in by_dkey.items()]
            by_type = _aggregate(type_units, lambda u: classify(u["raw"][0]).generic)
            by_depth = _aggregate(depth_units, lambda u: u["raw"][0])
            for g in by_depth.values():
                g.pop("raw")
            return {"source": "checkpoint+final_stats", "note": why,
                    "by_type": {t: by_type[t] for t in type_order(by_type)},
                    "by_depth": _depth_sorted(by_depth)}
    by_type: dict[str, dict[str, Any]] = {}
    for key, g in st_type.items():
        t = classify(key).generic
        cur = by_type.setdefault(t, {"mean": 0.0, "union": 0.0, "parameters": 0, "raw": [],
                                     "std": g.get("std")})
        p = g["parameters"]
        cur["mean"] += g["mean"] * p
        cur["union"] += g.get("union", 0.0) * p
        cur["parameters"] += p
        if cur["raw"]:
            cur["std"] = None  # merged groups: the spread over experts is not recoverable
        cur["raw"].append(key)
    for g in by_type.values():
        g["mean"] /= g["parameters"]
        g["union"] /= g["parameters"]
        g["raw"].sort()
    return {"source": "final_stats", "note": why,
            "by_type": {t: by_type[t] for t in type_order(by_type)},
            "by_depth": _depth_sorted({k: dict(v) for k, v in st_depth.items()})}


# ---------------------------------------------------------------------------------- routing
def task_alpha(predictions: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean alpha per task from eval predictions (per-token alphas are averaged first);
    None when no prediction carries an alpha. Tasks sorted by category, then name."""
    sums: dict[str, list[float]] = {}
    counts: dict[str, int] = defaultdict(int)
    cats: dict[str, str] = {}
    for rec in predictions:
        a = rec.get("alpha")
        if not a:
            continue
        while isinstance(a[0], list):  # [T, M] (token routing): mean over tokens
            a = [statistics.fmean(col) for col in zip(*a, strict=True)]
        task = str(rec.get("task", "unknown"))
        if task in sums and len(sums[task]) != len(a):
            raise ValueError(f"task {task}: alphas of different lengths")
        sums[task] = [s + float(x) for s, x in zip(sums.get(task, [0.0] * len(a)), a,
                                                   strict=True)]
        counts[task] += 1
        cats.setdefault(task, str(rec.get("category") or ""))
    if not sums:
        return None
    tasks = sorted(sums, key=lambda t: (cats[t], t))
    return {"tasks": tasks, "categories": [cats[t] for t in tasks],
            "alpha": [[s / counts[t] for s in sums[t]] for t in tasks],
            "n": [counts[t] for t in tasks]}


def overall_alpha(ta: dict[str, Any]) -> list[float]:
    """Mean alpha per expert over all evaluated instances (tasks weighted by their count
    ``n``, equally when it is absent), from task_alpha's (or routing_heatmap's) data."""
    alpha = ta["alpha"]
    n = ta.get("n") or [1] * len(alpha)
    return [sum(a[j] * k for a, k in zip(alpha, n, strict=True)) / sum(n)
            for j in range(len(alpha[0]))]


# ---------------------------------------------------------------------------------- numbers
def _last(rows: list[dict[str, Any]], key: str) -> Any:
    for r in reversed(rows):
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return v
    return None


def _first(rows: list[dict[str, Any]], key: str) -> Any:
    return _last(list(reversed(rows)), key)


def tail_mean(rows: Sequence[dict[str, Any]], key: str, fraction: float = 0.2
              ) -> tuple[float | None, int]:
    """Mean of ``key`` over the last ``fraction`` of the rows that log it (at least one row),
    and how many rows that was; (None, 0) when no row logs a finite value."""
    values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))
              and math.isfinite(r[key])]
    if not values:
        return None, 0
    tail = values[-max(1, math.ceil(fraction * len(values))):]
    return statistics.fmean(tail), len(tail)


def cost(run: Run) -> dict[str, Any]:
    """Parameter counts and peak memory of a run (None where the run does not say)."""
    counts = run.stats.get("parameter_counts") or {}
    active = counts.get("active_per_token")
    if active is None and run.method == "simoe" and "base" in counts and "delta" in counts:
        active = counts["base"] + counts["delta"]  # merged per request: base + live deltas
    return {"name": run.name, "method": run.method, "trainable": counts.get("trainable"),
            "total_stored": counts.get("total_stored"), "active_per_token": active,
            "peak_memory_mb": run.stats.get("peak_memory_mb")}


def vital_signs(run: Run) -> dict[str, Any]:
    """The numbers of a run worth a glance."""
    sp = run.stats.get("sparsity") or {}
    rows = run.metrics
    out = {"method": run.method, "steps": run.stats.get("steps", _last(rows, "step")),
           "wall_time_s": run.stats.get("wall_time_s"),
           "nll_first": _first(rows, "nll") if _first(rows, "nll") is not None
           else _first(rows, "loss"),
           "nll_last": _last(rows, "nll") if _last(rows, "nll") is not None
           else _last(rows, "loss"),
           "sparsity_mean": sp.get("mean"), "sparsity_union": sp.get("union"),
           "target_sparsity": run.stats.get("target_sparsity"),
           "lambda": run.stats.get("lambda", _last(rows, "lambda")),
           "mean_overlap": run.stats.get("mean_overlap"),
           "routing_entropy": _last(rows, "routing_entropy"),
           "rougeL": ((run.eval_metrics or {}).get("overall") or {}).get("rougeL")}
    out.update({k: v for k, v in cost(run).items() if k not in ("name", "method")})
    return out
