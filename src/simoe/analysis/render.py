"""Rendering of `simoe analyze`'s report: blocks (headings, paragraphs, images, tables, lists)
to Markdown and to self-contained HTML (PNGs embedded), the figure captions, the tables of
vital signs and costs, and the run-health section. Numbers come from run_data and health.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import figures as fg
from .run_data import Run, overall_alpha

if TYPE_CHECKING:
    from .health import Finding

# ---------------------------------------------------------------------------------- render
Block = tuple  # ("h1"|"h2"|"h3"|"p", text) | ("img", file, alt) | ("table", header, rows)
#                | ("ul", items)


def render_md(blocks: list[Block]) -> str:
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


def render_html(blocks: list[Block], output: Path, title: str) -> str:
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



# ---------------------------------------------------------------------------------- numbers
def fmt(v: Any, spec: str = ".3f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not math.isfinite(v):
        return "–"
    return format(v, spec)


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


# ---------------------------------------------------------------------------------- captions
def overlap_caption(d: dict[str, Any]) -> str:
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


def capacity_caption(d: dict[str, Any], run: Run) -> str:
    bt, bd = d["by_type"], d["by_depth"]
    total = sum(g["parameters"] for g in bt.values())
    mean = sum(g["mean"] * g["parameters"] for g in bt.values()) / total
    union = sum(g["union"] * g["parameters"] for g in bt.values()) / total
    parts = [f"Fraction of the {fg.human(total)} targeted parameters each expert keeps "
             "(gate ≠ 0). Bars: mean over experts; error bars: standard deviation over experts; "
             f"diamonds: union over experts. On average an expert keeps **{pct(mean)}**"]
    sp = (run.stats.get("sparsity") or {}).get("mean")
    if sp is not None:
        parts[-1] += f" (= 1 − mean sparsity {sp:.3f})"
    parts[-1] += f"; the union keeps {pct(union)}."
    if bt:
        hi = max(bt, key=lambda t: bt[t]["mean"])
        lo = min(bt, key=lambda t: bt[t]["mean"])
        parts.append(f"Most kept layer type: **{hi}** ({pct(bt[hi]['mean'])}); least kept: "
                     f"**{lo}** ({pct(bt[lo]['mean'])}).")
    blocks = {k: v for k, v in bd.items() if k != "other"}
    if blocks:
        hi = max(blocks, key=lambda k: blocks[k]["mean"])
        lo = min(blocks, key=lambda k: blocks[k]["mean"])
        parts.append(f"By depth: block {hi} keeps the most ({pct(blocks[hi]['mean'])}), "
                     f"block {lo} the least ({pct(blocks[lo]['mean'])}).")
    if d.get("source") != "checkpoint":
        parts.append(f"(Source: {d['source']}; {d.get('note') or 'no per-module detail'}.)")
    return " ".join(parts)


def routing_caption(d: dict[str, Any]) -> str:
    alpha = d["alpha"]
    m = len(alpha[0])
    n = d.get("n") or [1] * len(alpha)
    overall = overall_alpha(d)
    top = max(range(m), key=lambda j: overall[j])
    low = min(range(m), key=lambda j: overall[j])
    i, j = max(((i, j) for i in range(len(alpha)) for j in range(m)),
               key=lambda ij: alpha[ij[0]][ij[1]])
    return (f"Mean α over the evaluated instances of each of {len(alpha)} tasks "
            f"({len(set(d['categories']))} categories, {sum(n)} instances), rows in the "
            f"dendrogram's order. Most used expert overall: **e{top}** (mean α "
            f"{overall[top]:.2f}); least used: e{low} ({overall[low]:.2f}). Largest weight: "
            f"e{j} on {d['tasks'][i]} ({alpha[i][j]:.2f}).")


def dendrogram_caption(d: dict[str, Any]) -> str:
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


def curves_caption(d: dict[str, Any], run: Run) -> str:
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


# ---------------------------------------------------------------------------------- tables
def capacity_table(cap: dict[str, Any]) -> Block:
    """Kept capacity per generic layer type, with the raw module names behind each."""
    rows = [[t, ", ".join(f"`{r}`" for r in g.get("raw", [])), fg.human(g["parameters"]),
             f"{pct(g['mean'])} ± {pct(g['std'])}" if g.get("std") is not None
             else pct(g["mean"]), pct(g.get("union"))]
            for t, g in cap["by_type"].items()]
    return ("table", ["type", "raw modules", "parameters", "kept (mean ± std)", "union"], rows)


def _memory(mb: float | None) -> str:
    return "–" if mb is None else f"{mb:,.0f} MiB"


def vital_signs_table(runs: Sequence[Run], signs: dict[str, dict[str, Any]]) -> Block:
    """One row per run: run_data.vital_signs."""
    return ("table", ["run", "steps", "wall time", "NLL first → last",
                      "sparsity mean / union (τ)", "λ", "mean overlap", "routing entropy",
                      "trainable", "stored", "active / token", "peak memory", "ROUGE-L"],
            [[r.name, fmt(s["steps"], "d") if isinstance(s["steps"], int) else fmt(s["steps"]),
              "–" if s["wall_time_s"] is None else f"{s['wall_time_s']:.0f} s",
              f"{fmt(s['nll_first'])} → {fmt(s['nll_last'])}",
              f"{fmt(s['sparsity_mean'])} / {fmt(s['sparsity_union'])} "
              f"({fmt(s['target_sparsity'], 'g')})",
              fmt(s["lambda"], ".3g"), fmt(s["mean_overlap"]), fmt(s["routing_entropy"]),
              fg.human(s["trainable"]), fg.human(s["total_stored"]),
              fg.human(s["active_per_token"]), _memory(s["peak_memory_mb"]),
              fmt(s["rougeL"], ".2f")]
             for r in runs for s in [signs[r.name]]])


def cost_table(costs: Sequence[dict[str, Any]]) -> Block:
    """One row per run: run_data.cost."""
    return ("table", ["run", "method", "trainable", "stored", "active / token", "peak memory"],
            [[c["name"], c["method"], fg.human(c["trainable"]), fg.human(c["total_stored"]),
              fg.human(c["active_per_token"]), _memory(c["peak_memory_mb"])] for c in costs])


# ---------------------------------------------------------------------------------- health
_MARK = {"warning": "⚠ **warning**", "ok": "ok", "skipped": "skipped"}
_RANK = {"warning": 0, "ok": 1, "skipped": 2}


def health_blocks(health: dict[str, list[Finding]]) -> list[Block]:
    """The 'Run health' section: per SIMoE run, 'healthy' or the number of warnings, then
    every finding with its numbers (warnings first). Empty when no run has findings."""
    if not health:
        return []
    blocks: list[Block] = [("h2", "Run health")]
    for name, findings in health.items():
        warnings = [f for f in findings if f.severity == "warning"]
        skipped = sum(f.severity == "skipped" for f in findings)
        passed = len(findings) - len(warnings) - skipped
        verdict = (f"**{len(warnings)} warning{'s' * (len(warnings) != 1)}**" if warnings
                   else "**healthy**")
        blocks.append(("p", f"Run {name}: {verdict} ({passed} of {len(findings)} checks passed"
                       + (f", {skipped} skipped" if skipped else "") + ")."))
        ranked = sorted(findings, key=lambda f: _RANK.get(f.severity, len(_RANK)))
        blocks.append(("ul", [f"{_MARK.get(f.severity, f.severity)} — {f.check}: {f.message}"
                              for f in ranked]))
    return blocks
