"""`simoe analyze`: read run (and eval) directories, draw every figure that the data allows, and
write report.md, a self-contained report.html (PNGs embedded) and analysis.json.

    summary = analyze(["runs/simoe"], ["evals/simoe"], output="analysis")
    summary["files"]     every file written
    summary["skipped"]   [{"run", "figure", "reason"}] for figures the data did not allow
    summary["figures"]   {run name: {figure: the data drawn}}, summary["comparison"] likewise

Inputs (see simoe.training.run / simoe.evaluation.run): a run directory has final_stats.json
and metrics.jsonl (and, for SIMoE, simoe_config.json + simoe_model.safetensors); an eval
directory has metrics.json and predictions.jsonl (with 'alpha' per instance for SIMoE with
instance or task routing). Missing keys are tolerated: a figure whose data is absent is skipped
and the report says why.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import figures as fg
from .layer_types import classify, type_order

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike

FINAL_STATS = "final_stats.json"
METRICS_LOG = "metrics.jsonl"
EVAL_METRICS = "metrics.json"
PREDICTIONS = "predictions.jsonl"
SIMOE_CONFIG = "simoe_config.json"
SIMOE_WEIGHTS = "simoe_model.safetensors"

#: Per-run figures, in report order: key -> (file stem, section title).
RUN_FIGURES: dict[str, tuple[str, str]] = {
    "overlap": ("overlap", "Expert overlap (Fig. 5)"),
    "capacity": ("capacity", "Kept capacity by layer type and depth (Fig. 4)"),
    "routing_alpha": ("routing_alpha", "Mean routing weight per task (Fig. 2)"),
    "routing_dendrogram": ("routing_dendrogram", "Tasks clustered by routing (Fig. 2)"),
    "training_curves": ("training_curves", "Training curves"),
}
COMPARISON = ("comparison", "Parameters and memory side by side (Fig. 1 / Table 8)")


# ---------------------------------------------------------------------------------- files
def _atomic_write(path: Path, data: str | bytes) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, bytes):
        tmp.write_bytes(data)
    else:
        tmp.write_text(data, encoding="utf-8")
    os.replace(tmp, path)
    return path


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


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _jsonable(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


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


# ---------------------------------------------------------------------------------- numbers
def _last(rows: list[dict[str, Any]], key: str) -> Any:
    for r in reversed(rows):
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return v
    return None


def _first(rows: list[dict[str, Any]], key: str) -> Any:
    return _last(list(reversed(rows)), key)


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


def _fmt(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return "–"
    return format(v, spec)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


# ---------------------------------------------------------------------------------- captions
def _overlap_caption(d: dict[str, Any]) -> str:
    w = d.get("ortho_weight")
    text = (f"Pairwise overlap of the {d['experts']} experts' non-zero masks, |z_i ∩ z_j| / "
            f"|z_i ∪ z_j| weighted by parameters; orthogonality weight β = "
            f"{'n/a' if w is None else format(w, 'g')}. Mean off-diagonal overlap "
            f"**{d['mean_overlap']:.3f}**")
    if "max_pair" in d:
        (i, j, hi), (k, m, lo) = d["max_pair"], d["min_pair"]
        text += (f"; most similar pair e{i}–e{j} ({hi:.2f}), most distinct pair e{k}–e{m} "
                 f"({lo:.2f})")
    return text + "."


def _capacity_caption(d: dict[str, Any], run: Run) -> str:
    bt, bd = d["by_type"], d["by_depth"]
    total = sum(g["parameters"] for g in bt.values())
    mean = sum(g["mean"] * g["parameters"] for g in bt.values()) / total
    union = sum(g["union"] * g["parameters"] for g in bt.values()) / total
    parts = [f"Fraction of the {fg.human(total)} targeted parameters each expert keeps "
             "(gate ≠ 0). Bars: mean over experts; error bars: standard deviation over experts; "
             f"diamonds: union over experts. On average an expert keeps **{_pct(mean)}**"]
    sp = (run.stats.get("sparsity") or {}).get("mean")
    if sp is not None:
        parts[-1] += f" (= 1 − mean sparsity {sp:.3f})"
    parts[-1] += f"; the union keeps {_pct(union)}."
    if bt:
        hi = max(bt, key=lambda t: bt[t]["mean"])
        lo = min(bt, key=lambda t: bt[t]["mean"])
        parts.append(f"Most kept layer type: **{hi}** ({_pct(bt[hi]['mean'])}); least kept: "
                     f"**{lo}** ({_pct(bt[lo]['mean'])}).")
    blocks = {k: v for k, v in bd.items() if k != "other"}
    if blocks:
        hi = max(blocks, key=lambda k: blocks[k]["mean"])
        lo = min(blocks, key=lambda k: blocks[k]["mean"])
        parts.append(f"By depth: block {hi} keeps the most ({_pct(blocks[hi]['mean'])}), "
                     f"block {lo} the least ({_pct(blocks[lo]['mean'])}).")
    if d.get("source") != "checkpoint":
        parts.append(f"(Source: {d['source']}; {d.get('note') or 'no per-module detail'}.)")
    return " ".join(parts)


def _routing_caption(d: dict[str, Any]) -> str:
    alpha = d["alpha"]
    m = len(alpha[0])
    n = d.get("n") or [1] * len(alpha)
    overall = [sum(a[j] * k for a, k in zip(alpha, n, strict=True)) / sum(n) for j in range(m)]
    top = max(range(m), key=lambda j: overall[j])
    low = min(range(m), key=lambda j: overall[j])
    i, j = max(((i, j) for i in range(len(alpha)) for j in range(m)),
               key=lambda ij: alpha[ij[0]][ij[1]])
    return (f"Mean α over the evaluated instances of each of {len(alpha)} tasks "
            f"({len(set(d['categories']))} categories, {sum(n)} instances), rows in the "
            f"dendrogram's order. Most used expert overall: **e{top}** (mean α "
            f"{overall[top]:.2f}); least used: e{low} ({overall[low]:.2f}). Largest weight: "
            f"e{j} on {d['tasks'][i]} ({alpha[i][j]:.2f}).")


def _dendrogram_caption(d: dict[str, Any]) -> str:
    text = (f"{d['method'].capitalize()}-linkage hierarchical clustering ({d['metric']} "
            f"distance) of the {len(d['leaves'])} tasks by their mean α; leaves are prefixed "
            "by category.")
    if d.get("closest"):
        a, b, dist = d["closest"]
        text += f" Closest tasks: {a} and {b} (distance {dist:.3g})."
    if d.get("top_split"):
        n1, n2, h = d["top_split"]
        text += f" The top split separates {n1} from {n2} tasks (distance {h:.3g})."
    return text


def _curves_caption(d: dict[str, Any], run: Run) -> str:
    s = d["series"]
    steps = next(iter(s.values()))["steps"] if s else []
    parts = [f"{len(steps)} logged points up to step {d.get('last_step')}."]
    nll = s.get("nll") or s.get("loss")
    if nll:
        parts.append(f"NLL {nll['values'][0]:.3f} → **{nll['values'][-1]:.3f}**.")
    if "sparsity_mean" in s:
        text = f"Sparsity at the last log: mean {s['sparsity_mean']['values'][-1]:.3f}"
        if "sparsity_union" in s:
            text += f", union {s['sparsity_union']['values'][-1]:.3f}"
        if d.get("target_sparsity") is not None:
            text += f" (target τ = {d['target_sparsity']:g})"
        sp = run.stats.get("sparsity") or {}
        if sp.get("mean") is not None:
            text += f"; final measured mean {sp['mean']:.3f}"
            if sp.get("union") is not None:
                text += f", union {sp['union']:.3f}"
        parts.append(text + ".")
    if "lambda" in s:
        lam = s["lambda"]["values"]
        parts.append(f"λ peaks at {max(lam):.3g} and ends at {lam[-1]:.3g}.")
    if "routing_entropy" in s:
        ent = s["routing_entropy"]["values"]
        m = len([k for k in s if k.startswith("sparsity_expert_")])
        extra = f" (maximum ln {m} = {math.log(m):.3f})" if m > 1 else ""
        parts.append(f"Routing entropy {ent[0]:.3f} → {ent[-1]:.3f} nats{extra}.")
    return " ".join(parts)


# ---------------------------------------------------------------------------------- render
Block = tuple  # ("h1"|"h2"|"h3"|"p", text) | ("img", file, alt) | ("table", header, rows)
#                | ("ul", items)


def _render_md(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
        elif kind == "table":
            header, rows = b[1], b[2]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join("---" for _ in header) + "|")
            out.extend("| " + " | ".join(str(c) for c in r) + " |" for r in rows)
        elif kind == "ul":
            out.extend(f"- {item}" for item in b[1])
        out.append("")
    return "\n".join(out)


def _inline_html(text: str) -> str:
    t = html.escape(str(text), quote=False)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", t)


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;
max-width:1100px;margin:2em auto;padding:0 1em;color:#111;line-height:1.45}
img{max-width:100%;height:auto;border:1px solid #ddd;margin:.5em 0}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{border:1px solid #bbb;padding:.25em .6em;text-align:left}th{background:#eee}
code{background:#f3f3f3;padding:0 .2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em}
p.caption{color:#333}"""


def _render_html(blocks: list[Block], output: Path, title: str) -> str:
    out = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append(f"<{kind}>{_inline_html(b[1])}</{kind}>")
        elif kind == "p":
            out.append(f"<p class=\"caption\">{_inline_html(b[1])}</p>")
        elif kind == "img":
            data = base64.b64encode((output / b[1]).read_bytes()).decode("ascii")
            out.append(f"<figure><img src=\"data:image/png;base64,{data}\" "
                       f"alt=\"{html.escape(b[2])}\"></figure>")
        elif kind == "table":
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline_html(h)}</th>"
                                                      for h in b[1]) + "</tr></thead><tbody>")
            out.extend("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>"
                       for r in b[2])
            out.append("</tbody></table>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b[1]) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------- driver
def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


def _unique_names(paths: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    raw = list(names) if names else [p.resolve().name for p in paths]
    seen: dict[str, int] = defaultdict(int)
    out = []
    for n in raw:
        n = _slug(n)
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def _run_figures(run: Run, output: Path, prefix: str, files: list[Path],
                 skipped: list[dict[str, str]]) -> tuple[dict[str, Any], list[Block]]:
    """Draw every figure of one run the data allows; returns the data and report blocks."""
    data: dict[str, Any] = {}
    blocks: list[Block] = []
    label = run.name

    def skip(fig: str, reason: str) -> None:
        skipped.append({"run": run.name, "figure": fig, "reason": reason})

    def draw(fig: str, fn: Any, *args: Any, **kw: Any) -> dict[str, Any] | None:
        path = output / f"{prefix}{RUN_FIGURES[fig][0]}.png"
        try:
            d = fn(*args, path, **kw)
        except (KeyError, ValueError, TypeError, IndexError) as err:
            logger.warning("%s: figure %s failed: %s", run.name, fig, err)
            skip(fig, f"the data could not be drawn ({type(err).__name__}: {err})")
            return None
        files.append(path)
        data[fig] = d
        return d

    is_simoe = run.method == "simoe"
    # (1) overlap
    if "overlap" in run.stats:
        cfg = run.stats.get("config") or {}
        w = cfg.get("ortho_weight", (run.stats.get("ablation") or {}).get("ortho"))
        d = draw("overlap", fg.overlap_heatmap, run.stats["overlap"], ortho_weight=w, run=label)
        if d:
            blocks += [("h3", RUN_FIGURES["overlap"][1]),
                       ("img", f"{prefix}overlap.png", f"expert overlap of {label}"),
                       ("p", _overlap_caption(d))]
    else:
        skip("overlap", f"final_stats.json has no overlap matrix (method {run.method!r})"
             if run.stats else f"no {FINAL_STATS}")
    # (2) capacity
    cap = kept_capacity(run) if is_simoe or "kept_capacity" in run.stats else None
    if cap:
        d = draw("capacity", fg.capacity_bars, cap, run=label)
        if d:
            d.update({k: v for k, v in cap.items() if k not in ("by_type", "by_depth")})
            rows = [[t, ", ".join(f"`{r}`" for r in g.get("raw", [])), fg.human(g["parameters"]),
                     f"{_pct(g['mean'])} ± {_pct(g['std'])}" if g.get("std") is not None
                     else _pct(g["mean"]), _pct(g.get("union"))]
                    for t, g in cap["by_type"].items()]
            blocks += [("h3", RUN_FIGURES["capacity"][1]),
                       ("img", f"{prefix}capacity.png", f"kept capacity of {label}"),
                       ("p", _capacity_caption(cap, run)),
                       ("table", ["type", "raw modules", "parameters", "kept (mean ± std)",
                                  "union"], rows)]
    else:
        skip("capacity", "no kept-capacity data (no SIMoE checkpoint and no kept_capacity in "
             f"{FINAL_STATS}; method {run.method!r})")
    # (3) routing
    ta = task_alpha(run.predictions) if run.predictions is not None else None
    if run.predictions is None:
        reason = "no eval directory for this run (pass --eval EVAL_DIR)"
        skip("routing_alpha", reason)
        skip("routing_dendrogram", reason)
    elif ta is None:
        reason = (f"the predictions in `{run.eval_dir}` carry no alpha (not a SIMoE model, or "
                  "token-level routing)")
        skip("routing_alpha", reason)
        skip("routing_dendrogram", reason)
    else:
        dend = None
        if len(ta["tasks"]) >= 2:
            dend = draw("routing_dendrogram", fg.routing_dendrogram, ta, run=label)
        else:
            skip("routing_dendrogram", f"only {len(ta['tasks'])} task evaluated; clustering "
                 "needs at least 2")
        d = draw("routing_alpha", fg.routing_heatmap, ta,
                 order=dend["leaves"] if dend else None, run=label)
        if d:
            blocks += [("h3", RUN_FIGURES["routing_alpha"][1]),
                       ("img", f"{prefix}routing_alpha.png", f"mean alpha per task, {label}"),
                       ("p", _routing_caption(d))]
        if dend:
            blocks += [("h3", RUN_FIGURES["routing_dendrogram"][1]),
                       ("img", f"{prefix}routing_dendrogram.png", f"task dendrogram, {label}"),
                       ("p", _dendrogram_caption(dend))]
    # (4) curves
    if run.metrics:
        d = draw("training_curves", fg.training_curves, run.metrics,
                 target_sparsity=run.stats.get("target_sparsity"), run=label)
        if d:
            blocks += [("h3", RUN_FIGURES["training_curves"][1]),
                       ("img", f"{prefix}training_curves.png", f"training curves of {label}"),
                       ("p", _curves_caption(d, run))]
    else:
        skip("training_curves", f"no {METRICS_LOG} (or it is empty)")
    return data, blocks


def analyze(runs: Sequence[StrPath], eval_dirs: Sequence[StrPath] = (),
            output: StrPath = "analysis", names: Sequence[str] | None = None) -> dict[str, Any]:
    """Write every figure the runs (and evals) allow, report.md, report.html and analysis.json
    into ``output``; returns the summary (files, skipped figures with reasons, figure data).

    Eval directories are matched to runs by the model path in their metrics.json, else to the
    only run, else by position. With one run the PNGs are ``overlap.png`` etc.; with several,
    each is prefixed by the run's name (``<name>_overlap.png``).
    """
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    if isinstance(eval_dirs, (str, os.PathLike)):
        eval_dirs = [eval_dirs]
    if not runs:
        raise ValueError("analyze needs at least one run directory")
    if names is not None and len(names) != len(runs):
        raise ValueError(f"{len(names)} names for {len(runs)} runs")
    paths = [Path(r) for r in runs]
    loaded = [load_run(p, n) for p, n in zip(paths, _unique_names(paths, names), strict=True)]
    notes = pair_evals(loaded, eval_dirs)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)

    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    fig_data: dict[str, dict[str, Any]] = {}
    several = len(loaded) > 1
    signs = {r.name: vital_signs(r) for r in loaded}

    blocks: list[Block] = [("h1", "SIMoE analysis")]
    blocks.append(("table", ["run", "method", "directory", "evaluation"],
                   [[r.name, r.method, f"`{r.path}`",
                     f"`{r.eval_dir}`" if r.eval_dir else "–"] for r in loaded]))
    if notes:
        blocks.append(("ul", notes))
    blocks += [("h2", "Vital signs"),
               ("table", ["run", "steps", "wall time", "NLL first → last",
                          "sparsity mean / union (τ)", "λ", "mean overlap", "routing entropy",
                          "trainable", "stored", "active / token", "peak memory", "ROUGE-L"],
                [[r.name, _fmt(s["steps"], "d") if isinstance(s["steps"], int)
                  else _fmt(s["steps"]),
                  "–" if s["wall_time_s"] is None else f"{s['wall_time_s']:.0f} s",
                  f"{_fmt(s['nll_first'])} → {_fmt(s['nll_last'])}",
                  f"{_fmt(s['sparsity_mean'])} / {_fmt(s['sparsity_union'])} "
                  f"({_fmt(s['target_sparsity'], 'g')})",
                  _fmt(s["lambda"], ".3g"), _fmt(s["mean_overlap"]),
                  _fmt(s["routing_entropy"]), fg.human(s["trainable"]),
                  fg.human(s["total_stored"]), fg.human(s["active_per_token"]),
                  "–" if s["peak_memory_mb"] is None else f"{s['peak_memory_mb']:,.0f} MiB",
                  _fmt(s["rougeL"], ".2f")]
                 for r in loaded for s in [signs[r.name]]])]
    for run in loaded:
        prefix = f"{run.name}_" if several else ""
        data, run_blocks = _run_figures(run, output, prefix, files, skipped)
        fig_data[run.name] = data
        blocks += [("h2", f"Run {run.name}"), ("p", f"`{run.path}` — method {run.method}"
                   + (f"; {'; '.join(run.notes)}" if run.notes else "") + "."), *run_blocks]

    comparison = None
    if several:
        costs = [cost(r) for r in loaded]
        if any(c[k] for c in costs for k in ("trainable", "total_stored", "active_per_token",
                                             "peak_memory_mb")):
            path = output / f"{COMPARISON[0]}.png"
            comparison = fg.comparison_bars(costs, path)
            files.append(path)
            blocks += [("h2", COMPARISON[1]), ("img", path.name, "parameters and peak memory"),
                       ("table", ["run", "method", "trainable", "stored", "active / token",
                                  "peak memory"],
                        [[c["name"], c["method"], fg.human(c["trainable"]),
                          fg.human(c["total_stored"]), fg.human(c["active_per_token"]),
                          "–" if c["peak_memory_mb"] is None
                          else f"{c['peak_memory_mb']:,.0f} MiB"] for c in costs])]
        else:
            skipped.append({"run": "*", "figure": "comparison",
                            "reason": "no run reports parameter counts or peak memory"})
    else:
        skipped.append({"run": "*", "figure": "comparison",
                        "reason": "needs two or more runs"})

    blocks.append(("h2", "Skipped figures"))
    blocks.append(("ul", [f"{s['figure']} ({s['run']}): {s['reason']}" for s in skipped]
                   or ["none"]))

    summary: dict[str, Any] = {
        "output": str(output),
        "runs": [{"name": r.name, "path": str(r.path), "method": r.method,
                  "eval": str(r.eval_dir) if r.eval_dir else None, "notes": r.notes}
                 for r in loaded],
        "vital_signs": signs, "figures": fig_data, "comparison": comparison,
        "skipped": skipped, "notes": notes,
    }
    md_path = _atomic_write(output / "report.md", _render_md(blocks))
    html_path = _atomic_write(output / "report.html",
                              _render_html(blocks, output, "SIMoE analysis"))
    json_path = output / "analysis.json"
    files += [md_path, html_path, json_path]
    summary["files"] = [str(f) for f in files]
    _atomic_write(json_path, json.dumps(_jsonable(summary), indent=1) + "\n")
    return summary
