"""Live compaction: dead columns leave the deltas, the gates and the optimiser state during
training without changing the loss, and a run resumed after a compaction matches one that was
never interrupted."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import SNI_MINI, STORIES, needs_shared
from simoe import SIMoEConfig, SIMoEModel
from simoe.gates import CLOSED_BELOW
from simoe.training import TrainJob, train
from simoe.training.compaction import compact, dead_columns
from simoe.training.optimizer import SIMoEAdamW


def test_dead_columns_need_every_expert_past_the_margin():
    la = torch.tensor([[-4.0, -4.0, 0.5, -3.0],
                       [-3.5, -1.0, -4.0, -3.2]])
    assert dead_columns(la, margin=1.5).tolist() == [True, False, False, False]
    assert dead_columns(la, margin=1.3).tolist() == [True, False, False, True]
    assert CLOSED_BELOW - 1.5 < -3.0


def _gated_model():
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(STORIES, dtype=torch.float32)
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=3))
    torch.manual_seed(0)
    with torch.no_grad():
        for _, gd in model.gated_deltas():
            gd.delta.normal_(0, 0.02)
    return model


@needs_shared
def test_compaction_keeps_the_loss_and_slices_the_optimizer_state():
    model = _gated_model()
    gated = [gd for _, gd in model.gated_deltas()]
    groups = model.parameter_groups(1e-3, 0.1, 1e-3)
    for g in groups:
        g["second_moment"] = "row" if g["name"] == "gates" else "element"
    opt = SIMoEAdamW(groups)
    ids = torch.tensor([[1, 403, 407, 261, 300, 350, 12]])
    model.train()
    model(ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():  # every expert closes columns 0..9 of each tensor, far past the edge
        for gd in gated:
            gd.log_alpha[:, :10] = -4.0
    model.eval()
    before = model(ids, labels=ids).loss
    reference = {id(gd): (gd.delta.detach().clone(), opt.state[gd.delta]["exp_avg"].clone(),
                          opt.state[gd.log_alpha]["exp_avg_sq"].clone()) for gd in gated}
    removed = compact(gated, opt)
    assert removed == sum(10 * gd.params_per_gate for gd in gated)
    after = model(ids, labels=ids).loss
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)
    params = {id(p) for g in opt.param_groups for p in g["params"]}
    for gd in gated:
        delta, exp_avg, row_sq = reference[id(gd)]
        assert gd.num_live == gd.full_size - 10
        assert id(gd.delta) in params and id(gd.log_alpha) in params
        assert torch.equal(gd.delta, delta[..., 10:])
        assert torch.equal(opt.state[gd.delta]["exp_avg"], exp_avg[..., 10:])
        assert torch.equal(opt.state[gd.log_alpha]["exp_avg_sq"], row_sq)  # row-shared: kept
    assert len(opt.state) == sum(len(g["params"]) for g in opt.param_groups)
    model.train()
    model(ids, labels=ids).loss.backward()  # the compacted model still trains
    opt.step()
    assert all(torch.isfinite(gd.delta).all() for gd in gated)


@needs_shared
def test_a_tensor_compacted_to_nothing_still_trains():
    """Every column of one tensor closed by every expert: it is emptied, the model trains on."""
    model = _gated_model()
    gated = [gd for _, gd in model.gated_deltas()]
    opt = SIMoEAdamW(model.parameter_groups(1e-3, 0.1, 1e-3))
    ids = torch.tensor([[1, 403, 407, 261, 300, 350, 12]])
    model.train()
    model(ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()
    emptied = [gd for gd in gated if gd.rows is not None][0]
    with torch.no_grad():
        emptied.log_alpha.fill_(-4.0)
    compact(gated, opt)
    assert emptied.num_live == 0
    for _ in range(2):
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        assert torch.isfinite(loss)


@needs_shared
def test_resume_after_a_compaction_matches_the_uninterrupted_run(tmp_path):
    common = dict(model=str(STORIES), data=str(SNI_MINI), max_source_len=128, max_target_len=16,
                  max_instances_per_task=2, batch_size=4, logging_steps=1, save_steps=4,
                  sparsity=0.75, lr=1e-3, gate_lr=1.0, max_steps=12)
    straight = train(TrainJob(output=str(tmp_path / "a"), **common))
    a = [json.loads(ln) for ln in (straight / "metrics.jsonl").read_text().splitlines()]
    assert a[7]["live_fraction"] < 1.0  # compacted before the step-8 checkpoint
    assert a[-1]["live_fraction"] <= a[7]["live_fraction"]
    shutil.copytree(straight, tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoint-12")
    (tmp_path / "b" / "final_stats.json").unlink()
    resumed = train(TrainJob(output=str(tmp_path / "b"), resume=True, **common))
    b = [json.loads(ln) for ln in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == list(range(1, 13))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["live_fraction"] for r in a] == [r["live_fraction"] for r in b]
    sa = json.loads((straight / "final_stats.json").read_text())
    sb = json.loads((resumed / "final_stats.json").read_text())
    assert sa["sparsity"] == sb["sparsity"]
    assert sa["live_fraction_before_prune"] == sb["live_fraction_before_prune"] < 1.0


@needs_shared
def test_margin_zero_compacts_every_column_all_experts_closed(tmp_path):
    """--compact-margin 0: a column leaves as soon as every expert's gate is exactly 0, so the
    live fraction is 1 - union sparsity at every logged step (both weigh columns by the
    parameters they gate)."""
    run = train(TrainJob(output=str(tmp_path / "run"), model=str(STORIES), data=str(SNI_MINI),
                         max_source_len=128, max_target_len=16, max_instances_per_task=2,
                         batch_size=4, logging_steps=1, save_steps=100, sparsity=0.75, lr=1e-3,
                         gate_lr=1.0, max_steps=8, compact_margin=0.0))
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["sparsity_union"] > 0.2
    for r in rows:
        assert r["live_fraction"] == pytest.approx(1 - r["sparsity_union"], abs=1e-6), r["step"]
    assert json.loads((run / "final_stats.json").read_text())["compact_margin"] == 0.0
