"""`simoe analyze`'s run-health checks on small synthetic run directories: each check fires
exactly when it should, on both sides of its threshold, and the report opens with them.

The files use the keys a real run writes: final_stats.json from simoe.training.stats.final_stats
+ simoe.training.run (sparsity {per_expert, mean, union}, target_sparsity, config, ablation,
method), metrics.jsonl rows from SIMoETrainer.vital_signs (sparsity_mean, sparsity_union,
sparsity_expert_i, routing_entropy, alpha_mean_i, ...), predictions.jsonl from simoe eval.
"""

from __future__ import annotations

import json
import math

import pytest

from simoe.analysis import analyze, health_checks, load_run
from simoe.analysis.health import DENDROGRAM_MIN, entropy_threshold
from simoe.analysis.run_data import pair_evals

M = 8
TAU = 0.75
UNIFORM = [1.0 / M] * M


def write_run(root, *, per_expert=None, union=TAU, mean=None, tau=TAU, m=M, constraint=None,
              training_args=None, sparsity_constraint=True, entropy=1.9, alpha=None,
              rows=10, early_alpha=None, early_entropy=None, method="simoe", stats_extra=None):
    """A run directory with final_stats.json and ``rows`` lines of metrics.jsonl; the last
    20% of rows log ``alpha``/``entropy``, the earlier ones ``early_*`` (default the same)."""
    root.mkdir(parents=True, exist_ok=True)
    per_expert = per_expert if per_expert is not None else [TAU] * m
    mean = mean if mean is not None else sum(per_expert) / len(per_expert)
    alpha = alpha if alpha is not None else [1.0 / m] * m
    stats = {"sparsity": {"per_expert": per_expert, "mean": mean, "union": union},
             "target_sparsity": tau, "lambda": 0.0,
             "config": {"num_experts": m, "target_sparsity": tau, "ortho_weight": 5e-6},
             "ablation": {"targets": "all", "ortho": 5e-6,
                          "sparsity_constraint": sparsity_constraint, "routing": "instance"},
             "method": method, "steps": rows * 5}
    if constraint is not None:
        stats["constraint"] = constraint
    if training_args is not None:
        stats["training_args"] = training_args
    stats.update(stats_extra or {})
    (root / "final_stats.json").write_text(json.dumps(stats))
    tail = max(1, math.ceil(0.2 * rows))
    lines = []
    for k in range(rows):
        late = k >= rows - tail
        a = alpha if late or early_alpha is None else early_alpha
        h = entropy if late or early_entropy is None else early_entropy
        row = {"step": 5 * (k + 1), "loss": 2.0, "lambda": 0.0, "ortho": 0.1, "nll": 2.0,
               "sparsity_mean": mean, "sparsity_union": union, "expected_sparsity_union": mean,
               **{f"sparsity_expert_{i}": s for i, s in enumerate(per_expert)},
               "routing_entropy": h, **{f"alpha_mean_{i}": v for i, v in enumerate(a)},
               "epoch": k / rows}
        lines.append(json.dumps(row))
    (root / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_eval(root, run, task_alphas):
    """An eval directory naming ``run``: two instances per task with the given alpha."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "metrics.json").write_text(json.dumps({"model": str(run),
                                                   "overall": {"rougeL": 30.0}}))
    preds = [{"task": f"task{t:02d}", "category": f"cat{t % 2}", "prediction": "x",
              "references": ["x"], "rougeL": 100.0, "alpha": a}
             for t, a in enumerate(task_alphas) for _ in range(2)]
    (root / "predictions.jsonl").write_text("\n".join(json.dumps(p) for p in preds) + "\n")
    return root


def check(run_dir, name, eval_dir=None):
    run = load_run(run_dir)
    if eval_dir is not None:
        pair_evals([run], [eval_dir])
    found = {f.check: f for f in health_checks(run)}
    assert set(found) == {"constraint", "dead_expert", "unused_expert", "routing_collapse",
                          "dendrogram"}
    return found[name]


# ---------------------------------------------------------------------------------- constraint
@pytest.mark.parametrize("union,severity,word", [
    (TAU + 0.02, "ok", "within"), (TAU - 0.02, "ok", "within"), (TAU + 0.03, "ok", "within"),
    (TAU + 0.04, "warning", "overshot"), (TAU - 0.04, "warning", "missed"),
    (TAU - 0.031, "warning", "missed")])
def test_union_constraint_both_sides(tmp_path, union, severity, word):
    f = check(write_run(tmp_path, union=union, per_expert=[0.9] * M), "constraint")
    assert f.severity == severity and word in f.message
    # union, mean and per-expert figures are always quoted
    assert f"union {union:.3f}" in f.message and "mean 0.900" in f.message
    assert "per expert [0.900" in f.message


def test_default_constraint_is_union(tmp_path):
    """Mean far from tau, union on it: fine unless the run says it constrained the mean."""
    run = write_run(tmp_path / "a", union=TAU, per_expert=[0.95] * M)
    assert check(run, "constraint").severity == "ok"
    run = write_run(tmp_path / "b", union=TAU, per_expert=[0.95] * M, constraint="mean")
    f = check(run, "constraint")
    assert f.severity == "warning" and "mean sparsity 0.950" in f.message
    run = write_run(tmp_path / "c", union=0.6, per_expert=[0.76] * M,
                    training_args={"constraint": "mean"})
    assert check(run, "constraint").severity == "ok"  # training_args.constraint is read


def test_final_stats_constraint_wins_over_training_args(tmp_path):
    run = write_run(tmp_path, union=0.6, per_expert=[0.76] * M, constraint="union",
                    training_args={"constraint": "mean"})
    assert check(run, "constraint").severity == "warning"


def test_per_expert_constraint_checks_every_expert(tmp_path):
    ok = [TAU + 0.025, TAU - 0.025] * (M // 2)
    assert check(write_run(tmp_path / "a", per_expert=ok, union=0.5,
                           constraint="per-expert"), "constraint").severity == "ok"
    bad = ok[:-1] + [TAU + 0.035]
    f = check(write_run(tmp_path / "b", per_expert=bad, union=0.5, constraint="per-expert"),
              "constraint")
    assert f.severity == "warning" and f"e{M - 1} 0.785" in f.message
    assert "1 of 8 experts" in f.message and "union 0.500" in f.message


def test_constraint_skipped_without_data_or_constraint(tmp_path):
    f = check(write_run(tmp_path / "a", union=0.1, sparsity_constraint=False), "constraint")
    assert f.severity == "skipped" and "without a sparsity constraint" in f.message
    run = write_run(tmp_path / "b")
    stats = json.loads((run / "final_stats.json").read_text())
    del stats["sparsity"]
    (run / "final_stats.json").write_text(json.dumps(stats))
    (run / "metrics.jsonl").write_text('{"step": 5, "loss": 2.0}\n')
    f = check(run, "constraint")
    assert f.severity == "skipped" and "reports sparsity" in f.message


def test_sparsity_from_the_metrics_log_when_final_stats_lacks_it(tmp_path):
    run = write_run(tmp_path, union=TAU + 0.1)
    stats = json.loads((run / "final_stats.json").read_text())
    del stats["sparsity"]
    (run / "final_stats.json").write_text(json.dumps(stats))
    f = check(run, "constraint")
    assert f.severity == "warning" and "metrics.jsonl" in f.message


# ---------------------------------------------------------------------------------- experts
@pytest.mark.parametrize("worst,severity", [(1.0, "warning"), (0.999, "ok")])
def test_dead_expert(tmp_path, worst, severity):
    f = check(write_run(tmp_path, per_expert=[0.7] * (M - 1) + [worst]), "dead_expert")
    assert f.severity == severity
    if severity == "warning":
        assert f"e{M - 1}" in f.message and "1 of 8" in f.message


@pytest.mark.parametrize("low,severity", [(0.030, "warning"), (0.032, "ok")])
def test_unused_expert_from_the_metrics_log(tmp_path, low, severity):
    """1/(4M) = 0.03125 for M = 8; the last 20% of rows count, not the early ones."""
    alpha = [low] + [(1.0 - low) / (M - 1)] * (M - 1)
    early = [0.0] + [1.0 / (M - 1)] * (M - 1) if severity == "ok" else UNIFORM
    f = check(write_run(tmp_path, alpha=alpha, early_alpha=early), "unused_expert")
    assert f.severity == severity and "0.031" in f.message and "metrics.jsonl" in f.message
    assert f"e0 {low:.3f}" in f.message


def test_unused_expert_prefers_eval_predictions(tmp_path):
    run = write_run(tmp_path / "run", alpha=UNIFORM)
    skewed = [0.01] + [0.99 / (M - 1)] * (M - 1)
    ev = write_eval(tmp_path / "eval", run, [skewed, UNIFORM])
    f = check(run, "unused_expert", ev)
    # (0.01 + 0.125) / 2 = 0.0675 on average over the instances: fine
    assert f.severity == "ok" and "eval predictions" in f.message
    ev = write_eval(tmp_path / "eval2", run, [skewed, skewed])
    f = check(run, "unused_expert", ev)
    assert f.severity == "warning" and "e0 0.010" in f.message


# ---------------------------------------------------------------------------------- routing
@pytest.mark.parametrize("m,delta,severity", [(8, -0.01, "warning"), (8, 0.01, "ok"),
                                              (4, -0.01, "warning"), (4, 0.01, "ok"),
                                              (2, -0.01, "warning"), (2, 0.01, "ok")])
def test_routing_collapse_threshold_scales_with_m(tmp_path, m, delta, severity):
    floor = entropy_threshold(m)
    assert floor == pytest.approx(0.5 * math.log(m) / math.log(8))
    run = write_run(tmp_path, m=m, per_expert=[TAU] * m, entropy=floor + delta,
                    early_entropy=floor - 10 * delta)  # early rows on the other side
    f = check(run, "routing_collapse")
    assert f.severity == severity and f"{floor:.3f}" in f.message
    assert entropy_threshold(8) == pytest.approx(0.5)


def test_routing_collapse_skipped_without_entropy(tmp_path):
    run = write_run(tmp_path)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("\n".join(
        json.dumps({k: v for k, v in r.items() if k != "routing_entropy"}) for r in rows))
    assert check(run, "routing_collapse").severity == "skipped"


@pytest.mark.parametrize("shift,severity", [(0.01, "warning"), (0.02, "ok")])
def test_dendrogram_distances(tmp_path, shift, severity):
    """Two tasks whose mean alpha differ by ``shift`` on two experts: distance shift·√2."""
    run = write_run(tmp_path / "run")
    other = [UNIFORM[0] + shift, UNIFORM[1] - shift, *UNIFORM[2:]]
    f = check(run, "dendrogram", write_eval(tmp_path / "eval", run, [UNIFORM, other]))
    assert (shift * math.sqrt(2) < DENDROGRAM_MIN) == (severity == "warning")
    assert f.severity == severity and f"{shift * math.sqrt(2):.4f}" in f.message
    if severity == "warning":
        assert "not informative" in f.message


def test_dendrogram_skipped_without_eval_or_with_one_task(tmp_path):
    run = write_run(tmp_path / "run")
    f = check(run, "dendrogram")
    assert f.severity == "skipped" and "eval" in f.message
    f = check(run, "dendrogram", write_eval(tmp_path / "eval", run, [UNIFORM]))
    assert f.severity == "skipped" and "1 task" in f.message


# ---------------------------------------------------------------------------------- report
def test_report_opens_with_health(tmp_path):
    run = write_run(tmp_path / "good")
    ev = write_eval(tmp_path / "eval", run, [UNIFORM, [0.3, 0.3] + [0.4 / 6] * 6])
    s = analyze([run], [ev], output=tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.startswith("# SIMoE analysis\n\n## Run health\n\nRun good: **healthy** "
                         "(5 of 5 checks passed).")
    assert md.index("## Run health") < md.index("| run |") < md.index("## Vital signs")
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.index("<h2>Run health</h2>") < html.index("<table>")
    assert "<strong>healthy</strong>" in html
    data = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert data["health"] == s["health"] and data["health"]["good"]["healthy"] is True
    assert [f["severity"] for f in data["health"]["good"]["findings"]] == ["ok"] * 5


def test_report_names_the_unhealthy_run_and_skips_baselines(tmp_path):
    bad = write_run(tmp_path / "bad", union=0.5, per_expert=[1.0] + [0.7] * (M - 1),
                    entropy=0.2)
    lora = write_run(tmp_path / "lora", method="lora")
    s = analyze([bad, lora], output=tmp_path / "out")
    assert set(s["health"]) == {"bad"} and s["health"]["bad"]["healthy"] is False
    md = (tmp_path / "out" / "report.md").read_text()
    health = md.split("## Run health", 1)[1].split("| run |", 1)[0]
    assert "Run bad: **3 warnings**" in health and "lora" not in health
    for name in ("constraint", "dead_expert", "routing_collapse"):
        assert f"⚠ **warning** — {name}:" in health
    assert health_checks(load_run(lora)) == []


def test_no_health_section_for_baselines_only(tmp_path):
    s = analyze([write_run(tmp_path / "full", method="full")], output=tmp_path / "out")
    assert s["health"] == {}
    assert "Run health" not in (tmp_path / "out" / "report.md").read_text()
