"""Training end to end on the real sni-mini slice with the real stories260K model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import SNI_MINI, STORIES, needs_shared
from simoe import SIMoEModel
from simoe.cli import main
from simoe.training import TrainJob, train

pytestmark = needs_shared

SHORT = dict(model=str(STORIES), data=str(SNI_MINI), max_source_len=256, max_target_len=32,
             batch_size=8, max_instances_per_task=20, lr=1e-3, save_steps=1000)
STEPS = 80


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two 80-step runs at tau = 0.5 (defaults otherwise) that differ only in beta."""
    out = {}
    for name, ortho in (("plain", 0.0), ("ortho", 5e-5)):
        job = TrainJob(output=str(tmp_path_factory.mktemp(name)), sparsity=0.5, ortho=ortho,
                       max_steps=STEPS, logging_steps=10, **SHORT)
        out[name] = train(job)
    return out


def test_short_run_lands_the_union_on_tau_and_keeps_every_expert(runs):
    stats = json.loads((runs["plain"] / "final_stats.json").read_text())
    assert stats["constraint"] == "union"
    assert 0.49 <= stats["sparsity"]["union"] <= 0.53, stats["sparsity"]
    assert stats["sparsity"]["mean"] >= stats["sparsity"]["union"]
    assert len(stats["sparsity"]["per_expert"]) == 8
    assert max(stats["sparsity"]["per_expert"]) < 1.0  # no expert dead
    last = _metrics(runs["plain"])[-1]
    assert min(last[f"alpha_mean_{i}"] for i in range(8)) >= 1 / 32  # every expert in use
    assert stats["steps"] == STEPS
    counts = stats["parameter_counts"]
    assert counts["delta"] < counts["targeted_base"]  # pruned at the end
    assert counts["total_stored"] == counts["base"] + counts["delta"] + counts["gates"] + counts[
        "router"]
    kept = stats["kept_capacity"]
    assert {"q_proj", "down_proj", "input_layernorm"} <= set(kept["by_type"])
    assert set(kept["by_depth"]) == {"0", "1", "2", "3", "4", "other"}
    assert all(0.0 <= v["mean"] <= 1.0 for v in kept["by_type"].values())
    overlap = stats["overlap"]
    assert all(overlap[i][i] == 1.0 for i in range(8))
    assert all(overlap[i][j] == overlap[j][i] for i in range(8) for j in range(8))


def test_log_shows_the_hold_the_ramp_and_nll_falling(runs):
    log = _metrics(runs["plain"])
    assert [row["step"] for row in log] == list(range(10, STEPS + 1, 10))
    targets = [row["target"] for row in log]
    assert targets[0] == 0.0 and targets[-1] == 0.5  # hold (25%), ramp, then tau
    assert targets == sorted(targets)
    assert all(row["lambda"] == 0.0 for row in log if row["target"] == 0.0)
    nll = [row["nll"] for row in log]
    assert sum(nll[-2:]) / 2 < sum(nll[:2]) / 2
    for key in ("ortho", "sparsity_mean", "sparsity_union", "sparsity_expert_7",
                "routing_entropy", "alpha_mean_0", "expected_sparsity_union"):
        assert key in log[-1]


def test_orthogonality_weight_lowers_expert_overlap(runs):
    plain = json.loads((runs["plain"] / "final_stats.json").read_text())
    ortho = json.loads((runs["ortho"] / "final_stats.json").read_text())
    assert ortho["mean_overlap"] < plain["mean_overlap"]


def test_run_directory_loads_as_a_simoe_model(runs):
    run = runs["plain"]
    assert (run / "simoe_model.safetensors").is_file()
    model = SIMoEModel.from_pretrained(run)
    stats = json.loads((run / "final_stats.json").read_text())
    counts = model.parameter_counts()
    assert counts == {k: stats["parameter_counts"][k] for k in counts}
    assert stats["parameter_counts"]["active_per_token"] == counts["base"] + counts["delta"]
    ids = torch.tensor([[1, 403, 407, 261]])
    assert torch.isfinite(model(ids).logits).all()


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    common = dict(SHORT, max_instances_per_task=2, batch_size=4, logging_steps=1, save_steps=4,
                  sparsity=0.5)
    straight = train(TrainJob(output=str(tmp_path / "a"), max_steps=8, **common))
    # The schedule is a fraction of --max-steps, so the interrupted run must have the same
    # budget: a copy of the finished run cut back to its step-4 checkpoint.
    shutil.copytree(straight, tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoint-8")
    (tmp_path / "b" / "final_stats.json").unlink()
    resumed = train(TrainJob(output=str(tmp_path / "b"), max_steps=8, resume=True, **common))
    a, b = _metrics(straight), _metrics(resumed)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["lambda"] for r in a] == [r["lambda"] for r in b]
    assert any(r["lambda"] > 0 for r in a[4:])  # lambda had to be restored, not restarted


def test_routing_cache_matches_inline_routing_and_is_keyed(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simoe.data import SIMoECollator, encode_examples, load_examples
    from simoe.training import load_or_compute

    tok = AutoTokenizer.from_pretrained(STORIES)
    tok.pad_token = tok.eos_token
    examples = load_examples(str(SNI_MINI), max_instances_per_task=1)[:12]
    model = SIMoEModel.from_base(AutoModelForCausalLM.from_pretrained(STORIES))
    enc = encode_examples(examples, tok, 256, 32)
    cached = load_or_compute(model, tok, enc, tmp_path, batch_size=5)
    batch = SIMoECollator(tok)(enc)  # right-padded training batch, routed from its labels
    inline = model.routing_embedding(batch["input_ids"], batch["attention_mask"],
                                     labels=batch["labels"])
    assert torch.allclose(cached, inline, atol=1e-4)
    files = list(tmp_path.glob("routing-*.safetensors"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again = load_or_compute(model, tok, enc, tmp_path)
    assert torch.equal(again, cached) and files[0].stat().st_mtime_ns == mtime  # a hit
    shorter = encode_examples(examples, tok, 64, 32)  # another max length: another key
    load_or_compute(model, tok, shorter, tmp_path)
    assert [p.name for p in tmp_path.glob("routing-*.safetensors")] != [files[0].name]


def test_cli_reports_malformed_data_with_file_and_line(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"\n')
    code = main(["train", "--model", str(STORIES), "--data", str(data),
                 "--output", str(tmp_path / "run"), "--max-steps", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{data}:2" in err
    assert not (tmp_path / "run" / "simoe_model.safetensors").exists()


def test_cli_skip_invalid_trains_on_the_rest(tmp_path):
    data = tmp_path / "train.jsonl"
    good = [json.dumps({"prompt": f"Say {w}.", "completion": w}) for w in ("yes", "no", "up")]
    data.write_text("\n".join(good + ['{"prompt": ""', json.dumps({"prompt": "x"})]) + "\n")
    code = main(["train", "--model", str(STORIES), "--data", str(data), "--output",
                 str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "2",
                 "--skip-invalid", "--experts", "2"])
    assert code == 0
    stats = json.loads((tmp_path / "run" / "final_stats.json").read_text())
    assert stats["examples"] == 3 and stats["steps"] == 2


def test_cli_help_shows_paper_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (("--lr", "2e-05"), ("--sparsity", "0.75"), ("--ortho", "5e-06"),
                          ("--experts", "8"), ("--batch-size", "16")):
        assert flag in text and f"(default: {default})" in text, flag


@pytest.mark.parametrize("flags, names", [
    (["--sparsity", "1.0"], "--sparsity"),
    (["--sparsity=-0.1"], "--sparsity"),
    (["--ortho=-1e-6"], "--ortho"),
    (["--sparsity-warmup", "1.5"], "--sparsity-warmup"),
    (["--sparsity-hold", "0.6", "--sparsity-warmup", "0.5"], "--sparsity-hold"),
    (["--constraint", "median"], "--constraint"),
    (["--ortho-form", "frobenius"], "--ortho-form"),
])
def test_cli_refuses_bad_objective_settings_before_any_work(tmp_path, capsys, flags, names):
    out = tmp_path / "run"
    code = main(["train", "--model", str(STORIES), "--data", str(SNI_MINI), "--output", str(out),
                 *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and names in err
    assert not out.exists()
