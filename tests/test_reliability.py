"""Runs are never lost and never silently wrong (issue 13): one test per class of the fault
matrix, on the real stories260K and sni-mini, plus the CLI's error cases."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from conftest import SNI_MINI, STORIES, needs_shared
from simoe.cli import main
from simoe.data import DataError, load_examples
from simoe.evaluation import EvalJob, load_for_eval
from simoe.loading import ModelLoadError
from simoe.training import TrainJob, train
from simoe.training.methods import unused_settings

pytestmark = needs_shared

TINY = dict(model=str(STORIES), data=str(SNI_MINI), max_source_len=128, max_target_len=16,
            max_instances_per_task=2, batch_size=2, experts=2, logging_steps=1)
STEPS = dict(max_steps=4, save_steps=2)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> content hash) and every directory."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 4-step SIMoE run with checkpoints at steps 2 and 4 (never modified)."""
    return train(TrainJob(output=str(tmp_path_factory.mktemp("finished") / "run"), **STEPS,
                          **TINY))


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# ---------------------------------------------------------------------- 1. interrupted save
def test_resume_skips_an_incomplete_checkpoint_and_keeps_the_log(finished_run, tmp_path, caplog):
    # A kill during the step-4 checkpoint save: trainer_state.json (written last) is missing.
    run = _copy(finished_run, tmp_path / "run")
    (run / "final_stats.json").unlink()
    (run / "checkpoint-4" / "trainer_state.json").unlink()
    with caplog.at_level(logging.INFO):
        train(TrainJob(output=str(run), resume=True, **STEPS, **TINY))
    taken = _messages(caplog, "resuming from")
    assert len(taken) == 1
    assert f"{run / 'checkpoint-2'};" in taken[0]
    assert "checkpoint-4 (missing trainer_state.json)" in taken[0]
    straight, resumed = _metrics(finished_run), _metrics(run)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert json.loads((run / "final_stats.json").read_text())["steps"] == 4


def test_resume_without_a_complete_checkpoint_touches_nothing(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    (run / "final_stats.json").unlink()
    (run / "checkpoint-2" / "optimizer.pt").unlink()
    (run / "checkpoint-4" / "simoe_model.safetensors").unlink()
    before = _snapshot(run)
    with pytest.raises(FileNotFoundError) as exc:
        train(TrainJob(output=str(run), resume=True, **STEPS, **TINY))
    assert "no complete checkpoint" in str(exc.value)
    assert "checkpoint-2 (missing the optimizer state" in str(exc.value)
    assert "checkpoint-4 (missing the weights" in str(exc.value)
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        train(TrainJob(output=str(run), resume=str(run / "checkpoint-4"), **STEPS, **TINY))
    assert _snapshot(run) == before  # metrics.jsonl included


# ---------------------------------------------------------------------- 2. existing directory
def test_a_run_directory_is_never_replaced_by_accident(finished_run, tmp_path):
    before = _snapshot(finished_run)
    with pytest.raises(FileExistsError, match="not empty: pass --resume .* --overwrite"):
        train(TrainJob(output=str(finished_run), **STEPS, **TINY))
    assert _snapshot(finished_run) == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no simoe run"):
        train(TrainJob(output=str(notes), overwrite=True, **STEPS, **TINY))
    assert (notes / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_the_whole_previous_run(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    train(TrainJob(output=str(run), overwrite=True, max_steps=2, save_steps=1000, **TINY))
    assert not (run / "checkpoint-4").exists()  # the old run's checkpoints went with it
    for ckpt in run.glob("checkpoint-*"):
        assert json.loads((ckpt / "trainer_state.json").read_text())["max_steps"] == 2
    assert [r["step"] for r in _metrics(run)] == [1, 2]
    assert json.loads((run / "final_stats.json").read_text())["steps"] == 2
    assert json.loads((run / "job.json").read_text())["max_steps"] == 2


# ---------------------------------------------------------------------- 3. silently wrong resume
def test_resuming_a_finished_run_is_a_no_op(finished_run, caplog):
    before = _snapshot(finished_run)
    with caplog.at_level(logging.INFO):
        out = train(TrainJob(output=str(finished_run), resume=True, **STEPS, **TINY))
    assert out == finished_run
    assert len(_messages(caplog, "is a finished run")) == 1
    assert _snapshot(finished_run) == before  # no extra step, same weights and log


def test_auto_resume_reuses_finished_resumes_partial_and_starts_fresh(finished_run, tmp_path):
    before = _snapshot(finished_run)
    assert train(TrainJob(output=str(finished_run), resume="auto", **STEPS, **TINY)) \
        == finished_run
    assert _snapshot(finished_run) == before  # finished: reused as it is
    partial = _copy(finished_run, tmp_path / "partial")
    (partial / "final_stats.json").unlink()
    shutil.rmtree(partial / "checkpoint-4")
    train(TrainJob(output=str(partial), resume="auto", **STEPS, **TINY))
    assert [r["step"] for r in _metrics(partial)] == [1, 2, 3, 4]  # resumed from step 2
    fresh = tmp_path / "fresh"
    train(TrainJob(output=str(fresh), resume="auto", max_steps=1, save_steps=1000, **TINY))
    assert json.loads((fresh / "final_stats.json").read_text())["steps"] == 1


def test_resuming_with_other_hyper_parameters_is_refused(finished_run):
    before = _snapshot(finished_run)
    job = dict(TINY, sparsity=0.5, lr=1e-3, logging_steps=2)  # logging steps may change
    with pytest.raises(ValueError) as exc:
        train(TrainJob(output=str(finished_run), resume=True, **STEPS, **job))
    msg = str(exc.value)
    assert "--sparsity: 0.75 -> 0.5" in msg and "--lr: 2e-05 -> 0.001" in msg
    assert "logging" not in msg and "\n" not in msg
    assert _snapshot(finished_run) == before


# ---------------------------------------------------------------------- 4. values nobody accepts
@pytest.mark.parametrize("change, message", [
    (dict(lr=-1e-3), "--lr must be a finite number > 0, got -0.001"),
    (dict(gate_lr=0.0), "--gate-lr must be a finite number > 0"),
    (dict(router_lr=-1e-4), "--router-lr must be a finite number > 0"),
    (dict(lora_lr=float("nan")), "--lora-lr must be a finite number > 0"),
    (dict(lambda_lr=-0.02), "--lambda-lr must be a finite number > 0"),
    (dict(grad_accum=0), "--grad-accum must be an integer >= 1, got 0"),
    (dict(batch_size=0), "--batch-size must be an integer >= 1"),
    (dict(logging_steps=0), "--logging-steps must be an integer >= 1"),
    (dict(save_steps=-5), "--save-steps must be an integer >= 1"),
    (dict(max_source_len=0), "--max-source-len must be an integer >= 1"),
    (dict(max_target_len=0), "--max-target-len must be an integer >= 1"),
    (dict(epochs=0.0), "--epochs must be a finite number > 0"),
    (dict(max_steps=0), "--max-steps must be an integer >= 1, or -1"),
    (dict(experts=0), "--experts must be an integer >= 1"),
    (dict(compact_margin=-0.5), "--compact-margin must be a finite number >= 0, got -0.5"),
    (dict(resume=True, overwrite=True), "--resume and --overwrite exclude each other"),
])
def test_values_no_run_should_accept_are_refused(change, message):
    with pytest.raises(ValueError) as exc:
        TrainJob(**{**TINY, "output": "unused", **change})
    assert message in str(exc.value)


def test_epochs_may_be_anything_when_max_steps_is_set():
    TrainJob(**TINY, output="unused", epochs=0.0, max_steps=3)


def test_options_of_another_method_are_named():
    job = TrainJob(**{**TINY, "output": "unused", "method": "full", "experts": 8,
                      "sparsity": 0.5, "gate_lr": 0.5})
    assert unused_settings(job) == ["--sparsity=0.5", "--gate-lr=0.5"]
    lora = TrainJob(**{**TINY, "output": "unused", "method": "lora", "experts": 8, "lr": 1e-3})
    assert unused_settings(lora) == ["--lr=0.001"]
    assert unused_settings(TrainJob(**TINY, output="unused")) == []


def test_data_whose_every_completion_is_empty_is_refused(tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {w}.", "completion": ""}) + "\n"
                            for w in ("a", "b")))
    out = tmp_path / "run"
    with pytest.raises(DataError, match="every completion .* is empty"):
        train(TrainJob(**{**TINY, "data": str(data), "output": str(out), "max_steps": 1}))
    assert not out.exists()


# ---------------------------------------------------------------------- 5. where the base lies
def _tiny_eval_data(tmp_path: Path) -> Path:
    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"prompt": "Say yes.", "completion": "yes", "task": "t",
                                "category": "c"}) + "\n")
    return data


def test_a_run_records_its_base_and_follows_it_when_it_moves(tmp_path, monkeypatch, capsys):
    base = tmp_path / "bases" / "tiny"
    shutil.copytree(STORIES, base)
    monkeypatch.chdir(base.parent)
    run = train(TrainJob(**{**TINY, "model": "./tiny", "output": str(tmp_path / "run"),
                            "max_steps": 1, "save_steps": 1000}))
    monkeypatch.chdir(tmp_path)
    stats = json.loads((run / "final_stats.json").read_text())
    config = json.loads((run / "simoe_config.json").read_text())
    job = json.loads((run / "job.json").read_text())
    absolute = str(base.resolve())
    assert stats["base_model"] == config["base_model_name_or_path"] == job["model"] == absolute
    assert stats["base_fingerprint"] == job["base_fingerprint"]
    assert set(stats["base_fingerprint"]["files"]) == {"config.json", "model.safetensors"}

    moved = tmp_path / "elsewhere" / "tiny"
    moved.parent.mkdir()
    base.rename(moved)
    data, out = _tiny_eval_data(tmp_path), tmp_path / "eval"
    capsys.readouterr()
    argv = ["eval", "--model", str(run), "--data", str(data), "--output", str(out),
            "--max-new-tokens", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert absolute in err and "--base-model" in err
    assert not out.exists()
    assert main([*argv, "--base-model", str(moved)]) == 0
    assert json.loads((out / "metrics.json").read_text())["overall"]["n"] == 1

    other = tmp_path / "other"
    shutil.copytree(moved, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(cfg, indent=4))  # same model, other bytes
    capsys.readouterr()
    assert main([*argv[:-4], "--output", str(tmp_path / "eval2"), "--base-model",
                 str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not the one" in err


# ---------------------------------------------------------------------- 6. ordinary mistakes
def test_a_truncated_simoe_weight_file_is_one_line(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path / "run")
    weights = run / "simoe_model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 2)
    with pytest.raises(ModelLoadError) as exc:
        load_for_eval(str(run))
    assert str(exc.value).startswith(f"weight file {weights} is truncated or corrupt")
    assert "\n" not in str(exc.value)


# ---------------------------------------------------------------------- 7. misleading messages
def test_sni_directory_without_splits_says_so(tmp_path):
    sni = tmp_path / "sni"
    shutil.copytree(SNI_MINI / "tasks", sni / "tasks")
    with pytest.raises(DataError) as exc:
        load_examples(str(sni), "train")
    assert "no splits/ directory" in str(exc.value) and "Unknown split" not in str(exc.value)


def test_eval_batch_size_zero_names_the_flag():
    with pytest.raises(ValueError, match="--batch-size must be an integer >= 1, got 0"):
        EvalJob(model="m", data="d", output="o", batch_size=0)


def test_a_failure_after_loading_leaves_nothing_behind(tmp_path):
    # The Trainer refuses evaluation without an eval set: after the data, the model and the
    # routing cache, before any step.
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    existing.mkdir()
    for out in (fresh, existing):
        job = TrainJob(**{**TINY, "output": str(out), "max_steps": 1,
                          "extra_args": {"eval_strategy": "steps"}})
        with pytest.raises(ValueError, match="eval_dataset"):
            train(job)
    assert not fresh.exists()
    assert existing.is_dir() and not list(existing.iterdir())


# ---------------------------------------------------------------------- the CLI
def test_cli_user_errors_are_one_line_exit_2_and_change_nothing(finished_run, tmp_path, capsys):
    root = tmp_path
    run = _copy(finished_run, root / "run")
    a_file = root / "a_file"
    a_file.write_text("x")
    no_weights = root / "no_weights"
    no_weights.mkdir()
    shutil.copy(STORIES / "config.json", no_weights)
    truncated = root / "truncated"
    shutil.copytree(STORIES, truncated)
    with open(truncated / "model.safetensors", "r+b") as fh:
        fh.truncate(1000)
    no_splits = root / "no_splits"
    shutil.copytree(SNI_MINI / "tasks", no_splits / "tasks")
    empty = root / "empty.jsonl"
    empty.write_text(json.dumps({"prompt": "Say a.", "completion": ""}) + "\n")
    bad_eval = root / "bad_eval"
    bad_eval.mkdir()
    (bad_eval / "metrics.json").write_text(json.dumps({"overall": {"rougeL": 1.0}}))
    data = _tiny_eval_data(root)
    new = str(root / "new")

    def tr(*flags: str) -> list[str]:
        base = {"--model": str(STORIES), "--data": str(SNI_MINI), "--output": new,
                "--max-steps": "2", "--max-source-len": "128", "--max-target-len": "16",
                "--max-instances-per-task": "2", "--batch-size": "2", "--experts": "2"}
        for key, value in zip(flags[::2], flags[1::2], strict=True):
            base[key] = value
        return ["train", *[k if v == "" else f"{k}={v}" for k, v in base.items()]]

    ev = ["eval", "--model", str(run), "--data", str(data), "--output", new]
    cases = [
        (tr("--grad-accum", "0"), "--grad-accum must be an integer >= 1"),
        (tr("--logging-steps", "0"), "--logging-steps must be an integer >= 1"),
        (tr("--lr", "-1e-3"), "--lr must be a finite number > 0"),
        (tr("--lambda-lr", "-0.1"), "--lambda-lr must be a finite number > 0"),
        (tr("--method", "full", "--sparsity", "0.5"),
         "--method full does not use --experts=2, --sparsity=0.5"),
        (tr("--method", "full", "--experts", "0", "--sparsity", "2"), "--sparsity (tau) must"),
        (tr("--model", "./no/such/model"), "model path ./no/such/model does not exist"),
        (tr("--model", str(no_weights)), "has config.json but no weights"),
        (tr("--model", str(truncated)), "is truncated or corrupt"),
        (tr("--output", str(a_file / "run")), "is a file, not a directory"),
        (tr("--output", str(run)), "is not empty: pass --resume"),
        (tr("--output", str(run), "--resume", "", "--sparsity", "0.5"), "--sparsity: 0.75 -> 0.5"),
        (tr("--data", str(no_splits)), "no splits/ directory"),
        (tr("--data", str(empty)), "every completion"),
        (tr("--resume", "", "--overwrite", ""), "exclude each other"),
        ([*ev, "--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["eval", "--model", str(run), "--data", str(root / "nodata"), "--output",
          str(a_file / "e")], "is a file, not a directory"),  # output checked first
        ([*ev, "--base-model", str(root / "gone")], f"model path {root / 'gone'} does not exist"),
        (["eval", "--model", str(root / "nope"), "--data", str(data), "--output", new],
         "does not exist"),
        (["report", str(bad_eval), "--output", str(root / "t.md")], "lacks 'per_category'"),
        (["report", str(root / "nope"), "--output", str(root / "t.md")], "no metrics.json"),
        (["train", "--data", str(SNI_MINI), "--output", new], "required: --model"),
    ]
    before = _snapshot(root)
    for argv, expected in cases:
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert len(err.splitlines()) == 1, err
        assert expected in err, (expected, err)
        assert "Traceback" not in err and "--logging_steps" not in err
        assert _snapshot(root) == before, argv
    assert not Path(new).exists()


def test_cli_resume_of_a_finished_run_says_so_once(finished_run, capsys):
    before = _snapshot(finished_run)
    assert main(["train", "--model", str(STORIES), "--data", str(SNI_MINI), "--output",
                 str(finished_run), "--resume", "--max-steps", "4", "--save-steps", "2",
                 "--max-source-len", "128", "--max-target-len", "16",
                 "--max-instances-per-task", "2", "--batch-size", "2", "--experts", "2",
                 "--logging-steps", "1"]) == 0
    assert capsys.readouterr().out == ""  # the one line is the log's
    assert _snapshot(finished_run) == before
