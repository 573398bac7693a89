"""SIMoE under DDP and FSDP2: `torchrun --nproc_per_node 2` on the CPU (gloo) against one process
with the same global batch, and runs resumed with the other number of processes (2 -> 1, 1 -> 2)
or under FSDP again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import SNI_MINI, STORIES, needs_shared
from simoe.training import TrainJob, train

pytestmark = needs_shared

COMMON = ["--model", str(STORIES), "--data", str(SNI_MINI), "--max-instances-per-task", "2",
          "--max-source-len", "128", "--max-target-len", "16", "--lr", "1e-3",
          "--sparsity", "0.5", "--max-steps", "8", "--logging-steps", "1", "--save-steps", "4"]
GLOBAL_BATCH = 4


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
            "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
            "FSDP_TRANSFORMER_CLS_TO_WRAP": "LlamaDecoderLayer"}
FSDP_LAUNCHER = Path(__file__).with_name("fsdp_cpu.py")


def _launch(args: list[str], processes: int, fsdp: bool = False
            ) -> subprocess.CompletedProcess:
    # torchrun: `accelerate launch --cpu` starts one process whatever --num_processes says.
    entry = [str(FSDP_LAUNCHER)] if fsdp else ["-m", "simoe.cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
           "--standalone", *entry, "train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               **(FSDP_ENV if fsdp else {}))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same 8 steps with a global batch of 4: 2 processes x 2 rows, and 1 process x 4 (its
    live compaction removes nothing in 8 steps; the 2-process run has it off)."""
    root = tmp_path_factory.mktemp("ddp")
    two = _launch([*COMMON, "--output", str(root / "two"), "--batch-size", "2"], 2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = train(TrainJob(output=str(root / "one"), model=str(STORIES), data=str(SNI_MINI),
                         max_instances_per_task=2, max_source_len=128, max_target_len=16,
                         lr=1e-3, sparsity=0.5, max_steps=8, logging_steps=1, save_steps=4,
                         batch_size=GLOBAL_BATCH))
    return root / "two", one, two


def test_two_processes_match_one_with_the_same_global_batch(pair):
    two, one, _ = pair
    a, b = _metrics(one), _metrics(two)
    assert [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "nll", "routing_entropy", "alpha_mean_0"):
            assert rb[key] == pytest.approx(ra[key], rel=2e-4, abs=1e-5), (ra["step"], key)
        for key in ("lambda", "sparsity_union", "sparsity_mean", "target"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-6), (ra["step"], key)
    assert any(r["lambda"] > 0 for r in a)  # the dual step was exercised
    sa = json.loads((one / "final_stats.json").read_text())
    sb = json.loads((two / "final_stats.json").read_text())
    assert sb["sparsity"]["union"] == pytest.approx(sa["sparsity"]["union"], abs=1e-6)
    assert sb["parameter_counts"] == sa["parameter_counts"]
    job = json.loads((two / "job.json").read_text())
    assert job["processes"] == 2 and job["global_batch_size"] == GLOBAL_BATCH


def test_main_process_writes_the_run_once(pair):
    two, _, proc = pair
    assert len(list((two / "routing_cache").glob("routing-*.safetensors"))) == 1
    assert sorted(p.name for p in two.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert (two / "simoe_model.safetensors").is_file()
    # One metrics row per step (the other process logs nothing).
    assert len(_metrics(two)) == 8
    # DDP keeps the parameters it was built with: compaction is switched off, and said so.
    assert "live compaction is off with 2 processes" in proc.stderr
    assert json.loads((two / "final_stats.json").read_text())["live_compaction"] is False


def test_a_two_process_run_resumes_on_one_process(pair, tmp_path):
    two, _, _ = pair
    cut = tmp_path / "cut"
    shutil.copytree(two, cut)
    shutil.rmtree(cut / "checkpoint-8")
    (cut / "final_stats.json").unlink()
    resumed = train(TrainJob(output=str(cut), model=str(STORIES), data=str(SNI_MINI),
                             max_instances_per_task=2, max_source_len=128, max_target_len=16,
                             lr=1e-3, sparsity=0.5, max_steps=8, logging_steps=1, save_steps=4,
                             batch_size=GLOBAL_BATCH, resume=True))
    a, b = _metrics(two), _metrics(resumed)
    assert [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a[4:], b[4:], strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=2e-4, abs=1e-5), ra["step"]
        assert rb["lambda"] == pytest.approx(ra["lambda"], abs=1e-6), ra["step"]
    # Another global batch is refused, naming it.
    with pytest.raises(ValueError, match="global batch"):
        train(TrainJob(output=str(cut), model=str(STORIES), data=str(SNI_MINI),
                       max_instances_per_task=2, max_source_len=128, max_target_len=16,
                       lr=1e-3, sparsity=0.5, max_steps=8, logging_steps=1, save_steps=4,
                       batch_size=2, resume=True))


def test_a_one_process_run_resumes_on_two_processes(pair, tmp_path):
    _, one, _ = pair
    cut = tmp_path / "cut"
    shutil.copytree(one, cut)
    shutil.rmtree(cut / "checkpoint-8")
    (cut / "final_stats.json").unlink()
    proc = _launch([*COMMON, "--output", str(cut), "--batch-size", "2", "--resume"], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _metrics(one), _metrics(cut)
    assert [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a[4:], b[4:], strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=2e-4, abs=1e-5), ra["step"]
        assert rb["lambda"] == pytest.approx(ra["lambda"], abs=1e-6), ra["step"]
        assert rb["sparsity_union"] == pytest.approx(ra["sparsity_union"], abs=1e-6), ra["step"]
    job = json.loads((cut / "job.json").read_text())
    assert job["processes"] == 2 and job["global_batch_size"] == GLOBAL_BATCH


def test_bf16_under_ddp_matches_one_process_and_keeps_simoe_fp32(tmp_path):
    """--bf16 (bf16 base, autocast) on 2 processes x 2 rows against 1 process x 4: the same
    losses to bf16's precision, and the deltas, gates and router stay fp32."""
    from safetensors import safe_open

    two = tmp_path / "two"
    proc = _launch([*COMMON[:-4], "--max-steps", "4", "--logging-steps", "1", "--save-steps",
                    "4", "--output", str(two), "--batch-size", "2", "--bf16"], 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = train(TrainJob(output=str(tmp_path / "one"), model=str(STORIES), data=str(SNI_MINI),
                         max_instances_per_task=2, max_source_len=128, max_target_len=16,
                         lr=1e-3, sparsity=0.5, max_steps=4, logging_steps=1, save_steps=4,
                         batch_size=GLOBAL_BATCH, bf16=True))
    a, b = _metrics(one), _metrics(two)
    assert len(a) == len(b) == 4
    for ra, rb in zip(a, b, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=2e-2), ra["step"]
        assert rb["sparsity_union"] == pytest.approx(ra["sparsity_union"], abs=1e-2), ra["step"]
    with safe_open(str(two / "simoe_model.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys() if "live_idx" not in k}
    assert dtypes == {"F32"}


# ---------------------------------------------------------------------- FSDP2
@pytest.fixture(scope="module")
def fsdp(pair, tmp_path_factory):
    """The pair's 8 steps under FSDP2: 2 processes x 2 rows, decoder layers sharded."""
    run = tmp_path_factory.mktemp("fsdp") / "run"
    proc = _launch([*COMMON, "--output", str(run), "--batch-size", "2"], 2, fsdp=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc


def test_fsdp_matches_one_process_and_saves_the_same_files(pair, fsdp):
    _, one, _ = pair
    run, proc = fsdp
    assert "live compaction is off with 2 processes" in proc.stderr
    assert (run / "checkpoint-4" / "pytorch_model_fsdp_0").is_dir()  # the Trainer's sharded one
    a, b = _metrics(one), _metrics(run)
    assert [r["step"] for r in b] == list(range(1, 9))
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "nll", "routing_entropy", "alpha_mean_0", "ortho"):
            assert rb[key] == pytest.approx(ra[key], rel=2e-4, abs=1e-5), (ra["step"], key)
        for key in ("lambda", "sparsity_union", "sparsity_mean", "target"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-6), (ra["step"], key)
    assert any(r["lambda"] > 0 for r in a)
    sa = json.loads((one / "final_stats.json").read_text())
    sb = json.loads((run / "final_stats.json").read_text())
    assert sb["sparsity"]["union"] == pytest.approx(sa["sparsity"]["union"], abs=1e-6)
    assert sb["sparsity"]["per_expert"] == pytest.approx(sa["sparsity"]["per_expert"], abs=1e-6)
    assert sb["parameter_counts"] == sa["parameter_counts"]  # tied embeddings stay tied
    assert sb["live_compaction"] is False
    wa, wb = load_file(one / "simoe_model.safetensors"), load_file(run / "simoe_model.safetensors")
    assert sorted(wa) == sorted(wb)  # the same pruned checkpoint, gathered whole
    for key in wa:
        assert wb[key].dtype == wa[key].dtype and wb[key].shape == wa[key].shape, key
        torch.testing.assert_close(wb[key], wa[key], rtol=0, atol=1e-3)
    # The SIMoE files of a checkpoint are the single-process format too.
    assert sorted(load_file(run / "checkpoint-4" / "simoe_model.safetensors")) == \
        sorted(load_file(one / "checkpoint-4" / "simoe_model.safetensors"))


def test_an_fsdp_run_resumes_under_fsdp_and_loads_like_any_run(fsdp, tmp_path):
    from simoe import SIMoEModel

    run, _ = fsdp
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    shutil.rmtree(cut / "checkpoint-8")
    (cut / "final_stats.json").unlink()
    single = train_on_one(cut)
    assert "written under FSDP" in str(single)
    proc = _launch([*COMMON, "--output", str(cut), "--batch-size", "2", "--resume"], 2,
                   fsdp=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _metrics(run), _metrics(cut)
    for ra, rb in zip(a[4:], b[4:], strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=2e-4, abs=1e-5), ra["step"]
        assert rb["lambda"] == pytest.approx(ra["lambda"], abs=1e-6), ra["step"]
    model = SIMoEModel.from_pretrained(cut)  # base from the run's record, SIMoE state pruned
    merged = model.merged_model(torch.full((model.simoe_config.num_experts,), 1 / 8))
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        assert torch.isfinite(merged(ids).logits).all()


def train_on_one(run: Path) -> BaseException | None:
    """Resume ``run`` in this process (one process, no FSDP); the error it raises, if any."""
    try:
        train(TrainJob(output=str(run), model=str(STORIES), data=str(SNI_MINI),
                       max_instances_per_task=2, max_source_len=128, max_target_len=16,
                       lr=1e-3, sparsity=0.5, max_steps=8, logging_steps=1, save_steps=4,
                       batch_size=GLOBAL_BATCH, resume=True))
    except (ValueError, RuntimeError) as err:
        return err
    return None


def test_fsdp_with_bf16_keeps_simoe_fp32(pair, tmp_path):
    """FSDP2 with --bf16 (bf16 base, FSDP's bf16 mixed-precision policy): the run completes,
    its NLL stays within bf16's reach of the fp32 one-process run (whose 8-step schedule starts
    the sparsity pressure later: the total loss differs from step 2), and the saved SIMoE
    tensors are fp32."""
    from safetensors import safe_open

    _, one, _ = pair
    run = tmp_path / "bf16"
    proc = _launch([*COMMON[:-4], "--max-steps", "4", "--logging-steps", "1", "--save-steps",
                    "4", "--output", str(run), "--batch-size", "2", "--bf16"], 2, fsdp=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _metrics(one)[:4], _metrics(run)
    assert b[0]["loss"] == pytest.approx(a[0]["loss"], rel=2e-2)
    for ra, rb in zip(a, b, strict=True):
        assert rb["nll"] == pytest.approx(ra["nll"], rel=3e-2), ra["step"]
    with safe_open(str(run / "simoe_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys() if "live_idx" not in k} == {"F32"}
