"""`simoe analyze`: generic layer types, and the data behind every figure of a real short run."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from conftest import SNI_MINI, STORIES, TINY_CONFIGS, needs_shared, tiny_model
from simoe import SIMoEConfig, SIMoEModel
from simoe.analysis import analyze, classify, kept_capacity, layer_type, load_run, task_alpha
from simoe.analysis import curve_figures as cf
from simoe.analysis import figures as fg
from simoe.analysis import routing_figures as rf

PNG = b"\x89PNG\r\n\x1a\n"
RUN_FIGURES = ("overlap", "capacity", "routing_alpha", "routing_dendrogram", "training_curves")


# ---------------------------------------------------------------------------------- layer types
@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_every_targeted_name_gets_a_generic_type(arch):
    config = SIMoEConfig(num_experts=2, target_embeddings=True, target_lm_head=True)
    model = SIMoEModel.from_base(tiny_model(arch), config)
    names = [name for name, _ in model.gated_deltas()]
    assert names
    untyped = [n for n in names if layer_type(n) in ("other", "o+down")]
    assert not untyped, f"{arch}: no generic type for {untyped}"
    types = {layer_type(n) for n in names}
    assert {"norm", "embed", "lm_head", "down"} <= types
    assert types & {"q", "qkv"} and types & {"o"} and types & {"up", "gate_up"}
    for n in names:  # the raw names stay available
        info = classify(n)
        assert info.name == n and n.startswith(info.module) and info.leaf in n
        assert info.param in ("weight", "bias")


@pytest.mark.parametrize("name,generic", [
    ("transformer.h.0.attn.c_attn.weight", "qkv"),
    ("transformer.h.0.attn.c_proj.weight", "o"),
    ("transformer.h.0.mlp.c_proj.bias", "down"),
    ("transformer.h.0.mlp.c_fc.weight", "up"),
    ("transformer.h.1.ln_2.weight", "norm"),
    ("transformer.ln_f.bias", "norm"),
    ("transformer.wte.weight", "embed"),
    ("gpt_neox.layers.0.attention.query_key_value.weight", "qkv"),
    ("gpt_neox.layers.0.attention.dense.weight", "o"),
    ("gpt_neox.layers.0.mlp.dense_h_to_4h.weight", "up"),
    ("gpt_neox.layers.0.mlp.dense_4h_to_h.weight", "down"),
    ("gpt_neox.embed_in.weight", "embed"),
    ("embed_out.weight", "lm_head"),
    ("model.layers.0.mlp.gate_up_proj.weight", "gate_up"),
    ("model.layers.0.self_attn.qkv_proj.weight", "qkv"),
    ("model.layers.3.self_attn.q_proj.weight", "q"),
    ("model.layers.3.self_attn.k_proj.bias", "k"),
    ("model.layers.3.self_attn.q_norm.weight", "norm"),
    ("model.layers.3.mlp.gate_proj.weight", "gate"),
    ("model.layers.0.block_sparse_moe.gate.weight", "router"),
    ("model.layers.0.block_sparse_moe.experts.1.w2.weight", "down"),
    ("lm_head.weight", "lm_head"),
    ("model.norm.weight", "norm"),
    ("c_proj", "o+down"),  # a bare final_stats.json key: ambiguous without its block
    ("input_layernorm", "norm"),
    ("q_proj", "q"),
    ("c_attn.bias", "qkv"),
])
def test_layer_type_rules(name, generic):
    assert layer_type(name) == generic


def test_layer_depth_and_param():
    info = classify("model.layers.12.mlp.down_proj.weight")
    assert (info.depth, info.leaf, info.param, info.generic) == (12, "down_proj", "weight", "down")
    assert classify("model.norm.weight").depth is None


# ---------------------------------------------------------------------------------- figure units
def test_figures_reject_bad_data(tmp_path):
    with pytest.raises(ValueError):
        fg.overlap_heatmap([[1.0, 0.2]], tmp_path / "x.png")
    with pytest.raises(ValueError):
        fg.capacity_bars({"by_type": {"q": {"mean": 1.5, "std": 0.0}}}, tmp_path / "x.png")
    with pytest.raises(ValueError):
        rf.routing_dendrogram({"tasks": ["a"], "categories": ["A"], "alpha": [[1.0]]},
                              tmp_path / "x.png")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_task_alpha_averages_instances_and_tokens():
    preds = [{"task": "t1", "category": "B", "alpha": [1.0, 0.0]},
             {"task": "t1", "category": "B", "alpha": [0.0, 1.0]},
             {"task": "t0", "category": "A", "alpha": [[1.0, 0.0], [0.5, 0.5]]},
             {"task": "t2", "category": "A"}]
    ta = task_alpha(preds)
    assert ta["tasks"] == ["t0", "t1"] and ta["categories"] == ["A", "B"]
    assert ta["alpha"] == [[0.75, 0.25], [0.5, 0.5]] and ta["n"] == [1, 2]
    assert task_alpha([{"task": "t", "category": "A"}]) is None


def test_comparison_tolerates_missing_numbers(tmp_path):
    runs = [{"name": "simoe", "method": "simoe", "trainable": 10, "total_stored": 100,
             "active_per_token": 90, "peak_memory_mb": None},
            {"name": "full", "method": "full", "trainable": 100, "total_stored": 100}]
    data = cf.comparison_bars(runs, tmp_path / "c.png")
    assert [r["name"] for r in data["runs"]] == ["simoe", "full"]
    assert data["runs"][1]["peak_memory_mb"] is None
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)


# ---------------------------------------------------------------------------------- real run
SHORT = dict(model=str(STORIES), data=str(SNI_MINI), sparsity=0.5, max_steps=20, batch_size=8,
             max_source_len=256, max_target_len=32, gate_lr=0.25, lambda_lr=0.3,
             logging_steps=5, max_instances_per_task=4, save_steps=1000)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """A 20-step SIMoE run on sni-mini, its evaluation (2 instances per task) and analyses."""
    if not STORIES.is_dir():
        pytest.skip("../shared (stories260K, sni-mini) is absent: no real run to analyse")
    from simoe.evaluation import EvalJob, evaluate
    from simoe.training import TrainJob, train

    root = tmp_path_factory.mktemp("analysis")
    run = train(TrainJob(output=str(root / "run"), **SHORT))
    evaluate(EvalJob(model=str(run), data=str(SNI_MINI), output=str(root / "eval"),
                     max_instances=2, max_source_len=256, max_new_tokens=8, batch_size=16))
    summary = analyze([run], [root / "eval"], output=root / "out")
    return {"root": root, "run": run, "eval": root / "eval", "out": root / "out",
            "summary": summary, "stats": json.loads((run / "final_stats.json").read_text()),
            "preds": [json.loads(x) for x in (root / "eval" / "predictions.jsonl")
                      .read_text().splitlines()]}


@needs_shared
def test_every_figure_is_drawn_and_every_file_written(real):
    s, out = real["summary"], real["out"]
    assert [k["figure"] for k in s["skipped"]] == ["comparison"]  # one run: nothing to compare
    expected = {f"{f}.png" for f in RUN_FIGURES} | {"report.md", "report.html", "analysis.json"}
    assert {p.rsplit("/", 1)[1] for p in s["files"]} == expected
    for name in expected:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes().startswith(PNG)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    for f in RUN_FIGURES:
        assert f"]({f}.png)" in md
    assert html.count("data:image/png;base64,") == len(RUN_FIGURES)
    assert "src=\"overlap.png\"" not in html  # self-contained
    assert json.loads((out / "analysis.json").read_text())["figures"]["run"]


@needs_shared
def test_overlap_matrix_is_the_runs(real):
    data = real["summary"]["figures"]["run"]["overlap"]
    m, stats = data["matrix"], real["stats"]
    n = stats["config"]["num_experts"]
    assert len(m) == n and all(len(row) == n for row in m)
    for i in range(n):
        assert m[i][i] == 1.0
        for j in range(n):
            assert m[i][j] == m[j][i] and 0.0 <= m[i][j] <= 1.0
    assert m == stats["overlap"]
    assert data["mean_overlap"] == pytest.approx(stats["mean_overlap"])
    assert data["ortho_weight"] == stats["config"]["ortho_weight"]
    assert f"{data['mean_overlap']:.3f}" in (real["out"] / "report.md").read_text()


@needs_shared
def test_kept_capacity_matches_the_parameter_counts(real):
    cap = real["summary"]["figures"]["run"]["capacity"]
    stats = real["stats"]
    assert cap["source"] == "checkpoint"
    targeted = stats["parameter_counts"]["targeted_base"]
    one_minus_sparsity = 1.0 - stats["sparsity"]["mean"]
    for grouping in ("by_type", "by_depth"):
        groups = cap[grouping]
        for g in groups.values():
            assert 0.0 <= g["mean"] <= 1.0 and 0.0 <= g["union"] <= 1.0
            assert g["std"] >= 0.0 and all(0.0 <= x <= 1.0 for x in g["per_expert"])
            assert g["union"] >= max(g["per_expert"]) - 1e-12
        assert sum(g["parameters"] for g in groups.values()) == targeted
        weighted = sum(g["mean"] * g["parameters"] for g in groups.values()) / targeted
        assert weighted == pytest.approx(one_minus_sparsity, abs=1e-9)
    assert set(cap["by_type"]) == {"q", "k", "v", "o", "gate", "up", "down", "norm"}
    assert set(cap["by_type"]["norm"]["raw"]) == {"input_layernorm", "post_attention_layernorm",
                                                  "norm"}
    assert set(cap["by_depth"]) == {str(i) for i in range(5)} | {"other"}
    # the per-module table covers every gated tensor, with its raw name
    assert sum(m["parameters"] for m in cap["modules"]) == targeted
    assert any(m["name"] == "model.layers.0.self_attn.q_proj.weight" for m in cap["modules"])
    # final_stats.json says the same per raw type
    for key, g in stats["kept_capacity"]["by_type"].items():
        assert cap["by_type"][layer_type(key)]["parameters"] >= g["parameters"]
    assert cap["by_type"]["q"]["mean"] == pytest.approx(stats["kept_capacity"]["by_type"]
                                                        ["q_proj"]["mean"])
    assert cap["by_type"]["q"]["std"] == pytest.approx(stats["kept_capacity"]["by_type"]
                                                       ["q_proj"]["std"])


@needs_shared
def test_kept_capacity_without_the_checkpoint_agrees(real, tmp_path):
    for name in ("final_stats.json", "metrics.jsonl"):
        shutil.copy(real["run"] / name, tmp_path / name)
    exact = real["summary"]["figures"]["run"]["capacity"]
    approx = kept_capacity(load_run(tmp_path))
    assert approx["source"] == "final_stats"
    assert list(approx["by_type"]) == list(exact["by_type"])
    for t, g in approx["by_type"].items():
        assert g["mean"] == pytest.approx(exact["by_type"][t]["mean"])
        assert g["union"] == pytest.approx(exact["by_type"][t]["union"])
        assert g["parameters"] == exact["by_type"][t]["parameters"]
        if g["std"] is not None:  # known unless several raw types were merged (norms)
            assert g["std"] == pytest.approx(exact["by_type"][t]["std"])
    assert approx["by_type"]["norm"]["std"] is None


@needs_shared
def test_kept_capacity_without_the_base_model_agrees(real, monkeypatch):
    """Base model config not found: per-expert counts from the checkpoint, group sizes from
    final_stats.json; the spread over experts of merged types is still exact."""
    from simoe.analysis import run_data

    monkeypatch.setattr(run_data, "_base_param_sizes", lambda base: (None, "not here"))
    exact = real["summary"]["figures"]["run"]["capacity"]
    mid = kept_capacity(load_run(real["run"]))
    assert mid["source"] == "checkpoint+final_stats"
    for grouping in ("by_type", "by_depth"):
        assert list(mid[grouping]) == list(exact[grouping])
        for key, g in mid[grouping].items():
            for field in ("mean", "std", "union", "parameters"):
                assert g[field] == pytest.approx(exact[grouping][key][field]), (key, field)


@needs_shared
def test_dendrogram_leaves_are_the_evaluated_tasks(real):
    figs = real["summary"]["figures"]["run"]
    tasks = {p["task"] for p in real["preds"]}
    dend = figs["routing_dendrogram"]
    assert sorted(dend["leaves"]) == sorted(tasks) and len(dend["leaves"]) == len(tasks)
    cats = {p["task"]: p["category"] for p in real["preds"]}
    for task, label in zip(dend["leaves"], dend["labels"], strict=True):
        assert label == f"{cats[task]} · {task}"
    heat = figs["routing_alpha"]
    assert heat["tasks"] == dend["leaves"]  # rows in the dendrogram's order
    m = real["stats"]["config"]["num_experts"]
    for row, task, n in zip(heat["alpha"], heat["tasks"], heat["n"], strict=True):
        assert len(row) == m and sum(row) == pytest.approx(1.0, abs=1e-5)
        mine = [p["alpha"] for p in real["preds"] if p["task"] == task]
        assert n == len(mine)
        assert row[0] == pytest.approx(sum(a[0] for a in mine) / n)
    assert len(dend["linkage"]) == len(tasks) - 1
    assert sum(dend["top_split"][:2]) == len(tasks)


@needs_shared
def test_training_curves_are_the_metric_log(real):
    curves = real["summary"]["figures"]["run"]["training_curves"]
    rows = [json.loads(x) for x in (real["run"] / "metrics.jsonl").read_text().splitlines()]
    s = curves["series"]
    assert s["nll"]["steps"] == [r["step"] for r in rows]
    assert s["nll"]["values"] == pytest.approx([r["nll"] for r in rows])
    m = real["stats"]["config"]["num_experts"]
    assert sorted(k for k in s if k.startswith("sparsity_expert_")) == sorted(
        f"sparsity_expert_{i}" for i in range(m))
    for key in ("sparsity_union", "lambda", "routing_entropy"):
        assert len(s[key]["values"]) == len(rows)
    assert all(0.0 <= v <= math.log(m) + 1e-6 for v in s["routing_entropy"]["values"])
    assert curves["target_sparsity"] == real["stats"]["target_sparsity"]


@needs_shared
def test_without_eval_the_report_names_the_skipped_figures(real, tmp_path):
    s = analyze([real["run"]], output=tmp_path)
    skipped = {k["figure"]: k["reason"] for k in s["skipped"]}
    assert set(skipped) == {"routing_alpha", "routing_dendrogram", "comparison"}
    assert "eval" in skipped["routing_alpha"]
    for f in ("overlap", "capacity", "training_curves"):
        assert (tmp_path / f"{f}.png").stat().st_size > 0
    assert not (tmp_path / "routing_alpha.png").exists()
    md = (tmp_path / "report.md").read_text()
    skipped_section = md.split("## Skipped figures", 1)[1]
    assert "routing_alpha" in skipped_section and "routing_dendrogram" in skipped_section
    assert "Skipped figures" in (tmp_path / "report.html").read_text()


@needs_shared
def test_several_runs_get_the_comparison(real, tmp_path):
    lora = tmp_path / "lora"
    lora.mkdir()  # another method: only what any run reports, some keys missing
    (lora / "final_stats.json").write_text(json.dumps({
        "method": "lora", "parameter_counts": {"trainable": 4096, "total_stored": 264128},
        "peak_memory_mb": 300.0}))
    (lora / "metrics.jsonl").write_text('{"step": 5, "loss": 6.0}\n{"step": 10, "loss": 5.5}\n')
    out = tmp_path / "out"
    s = analyze([real["run"], real["run"], lora], [real["eval"]], output=out,
                names=["simoe", "simoe", "lora"])
    assert [r["name"] for r in s["runs"]] == ["simoe", "simoe-2", "lora"]
    assert (out / "comparison.png").stat().st_size > 0
    rows = {r["name"]: r for r in s["comparison"]["runs"]}
    counts = real["stats"]["parameter_counts"]
    assert rows["simoe"]["trainable"] == counts["trainable"]
    assert rows["simoe"]["total_stored"] == counts["total_stored"]
    assert rows["lora"]["active_per_token"] is None and rows["lora"]["peak_memory_mb"] == 300.0
    assert (out / "simoe_overlap.png").is_file() and (out / "simoe-2_capacity.png").is_file()
    assert (out / "lora_training_curves.png").is_file()
    skipped = {(k["run"], k["figure"]) for k in s["skipped"]}
    assert ("lora", "overlap") in skipped and ("lora", "capacity") in skipped
    assert ("simoe", "routing_alpha") not in skipped  # the eval names this run
    assert "comparison.png" in (out / "report.md").read_text()
