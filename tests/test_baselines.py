"""Every baseline and every SIMoE ablation trains through the same pipeline and evaluates."""

from __future__ import annotations

import json

import pytest

from conftest import SNI_MINI, STORIES, needs_shared
from simoe import SIMoEModel
from simoe.cli import main
from simoe.evaluation import EvalJob, evaluate
from simoe.training import TrainJob, train

pytestmark = needs_shared

TINY = dict(model=str(STORIES), data=str(SNI_MINI), max_source_len=128, max_target_len=16,
            batch_size=4, max_steps=4, max_instances_per_task=2, logging_steps=2,
            save_steps=1000, experts=4)


def _eval(run, tmp_path):
    return evaluate(EvalJob(model=str(run), data=str(SNI_MINI), output=str(tmp_path / "eval"),
                            max_instances=1, max_source_len=128, max_new_tokens=4,
                            batch_size=16))


@pytest.mark.parametrize("method", ["full", "lora", "upcycle", "btx"])
def test_baseline_trains_and_evaluates(method, tmp_path):
    run = train(TrainJob(output=str(tmp_path / method), method=method, **TINY))
    stats = json.loads((run / "final_stats.json").read_text())
    assert stats["method"] == method
    counts = stats["parameter_counts"]
    assert counts["trainable"] > 0 and counts["total_stored"] >= counts["active_per_token"] > 0
    assert stats["peak_memory_mb"] > 0 and stats["wall_time_s"] > 0
    assert (run / "config.json").is_file() and (run / "metrics.jsonl").is_file()
    if method in ("upcycle", "btx"):
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["model_type"] == "mixtral"
        assert counts["active_per_token"] < counts["total_stored"]  # top-2 of several experts
    if method == "lora":
        assert counts["trainable"] < counts["active_per_token"]
        assert (run / "adapter" / "adapter_config.json").is_file()
    if method == "btx":
        assert sum(stats["btx"]["domains"].values()) == stats["examples"]
        assert set(stats["btx"]["domains"]) <= {"classification", "qa_reasoning",
                                                "generation_rewriting", "extraction_other"}
        assert cfg["num_local_experts"] == len(stats["btx"]["domains"]) + 1
    metrics = _eval(run, tmp_path)
    assert metrics["overall"]["categories"] == 12


@pytest.mark.parametrize("ablation", ["ffn", "no_ortho", "no_constraint", "token"])
def test_simoe_ablation_trains_and_evaluates(ablation, tmp_path):
    extra = {"ffn": {"targets": "ffn"}, "no_ortho": {"ortho": 0.0},
             "no_constraint": {"sparsity_constraint": False},
             "token": {"routing": "token"}}[ablation]
    run = train(TrainJob(output=str(tmp_path / ablation), **TINY, **extra))
    stats = json.loads((run / "final_stats.json").read_text())
    model = SIMoEModel.from_pretrained(run)
    names = [name for name, _ in model.gated_deltas()]
    if ablation == "ffn":
        assert names and all(".mlp." in n for n in names)
    else:
        assert any("self_attn" in n for n in names) and any("norm" in n for n in names)
    if ablation == "no_constraint":
        assert model.simoe_config.gate_mode == "free"
        counts = stats["parameter_counts"]
        assert counts["delta"] == counts["targeted_base"]  # free masks are never pruned
        log = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert all(row["lambda"] == 0.0 for row in log)
    if ablation == "no_ortho":
        assert model.simoe_config.ortho_weight == 0.0
    if ablation == "token":
        assert not (run / "routing_cache").exists()
    metrics = _eval(run, tmp_path)
    assert metrics["overall"]["categories"] == 12


def test_upcycling_an_unsupported_architecture_fails_clearly(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=512)).save_pretrained(
        gpt2)
    (gpt2 / "tokenizer_config.json").write_text((STORIES / "tokenizer_config.json").read_text())
    (gpt2 / "tokenizer.json").write_text((STORIES / "tokenizer.json").read_text())
    code = main(["train", "--method", "upcycle", "--model", str(gpt2), "--data", str(SNI_MINI),
                 "--output", str(tmp_path / "run"), "--max-steps", "1",
                 "--max-instances-per-task", "1", "--max-source-len", "64"])
    assert code == 2
    assert "gpt2" in capsys.readouterr().err.lower()
