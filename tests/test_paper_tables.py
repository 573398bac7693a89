"""benchmarks/paper_tables.py end to end on stories260K + sni-mini with a tiny budget: the tables
exist with the task count and bootstrap intervals, and a second invocation reuses every row."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SNI_MINI, STORIES, needs_shared

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_tables.py"


def _load_script():  # noqa: ANN202 - the benchmark module
    spec = importlib.util.spec_from_file_location("paper_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through it
    spec.loader.exec_module(module)
    return module


TINY = ["--steps", "2", "--batch-size", "2", "--max-source-len", "48", "--max-target-len", "8",
        "--train-instances", "1", "--save-steps", "1", "--eval-instances", "1",
        "--eval-max-source-len", "48", "--max-new-tokens", "4", "--eval-batch-size", "16",
        "--resamples", "200"]


@needs_shared
def test_paper_tables_tiny_run_and_reuse(tmp_path, capsys):
    pt = _load_script()
    out = tmp_path / "tables"
    records = tmp_path / "records"
    argv = ["--model", str(STORIES), "--data", str(SNI_MINI), "--output", str(out),
            "--rows", "base,simoe", "--records", str(records), *TINY]
    first = pt.main(argv)
    assert first["rows"] == {"base": {"train": "none (base)", "eval": "evaluated"},
                             "simoe": {"train": "trained", "eval": "evaluated"}}
    n_tasks = len((SNI_MINI / "splits" / "test_tasks.txt").read_text().split())
    for name in ("table1.md", "table3.md", "table4.md", "fig1.md", "table1.png",
                 "summary.json"):
        assert (out / name).is_file(), name
    table1 = (out / "table1.md").read_text()
    assert f"{n_tasks} of {n_tasks} test tasks" in table1
    assert "12 unseen categories" in table1
    assert re.search(r"\| SIMoE \| -?\d+\.\d \| \[-?\d+\.\d, -?\d+\.\d\] \|", table1)
    for name in ("table3.md", "table4.md"):
        assert f"{n_tasks} of {n_tasks} test tasks" in (out / name).read_text()
    assert "benchmarks/train_cost.py" in (out / "fig1.md").read_text()
    table3 = (out / "table3.md").read_text()
    assert "| base (zero-shot) |" in table3 and "| SIMoE |" in table3
    run = out / "runs" / "simoe"
    assert not list(run.glob("checkpoint-*"))  # deleted once the row finished
    summary = json.loads((out / "summary.json").read_text())
    lo, hi = summary["rows"]["simoe"]["avg_ci"]
    assert lo <= summary["rows"]["simoe"]["avg"] <= hi
    printed = capsys.readouterr().out
    assert "[2/2] simoe: train trained" in printed and f"Outputs in {out.resolve()}" in printed

    stamp = {p: p.stat().st_mtime_ns for p in (run / "final_stats.json",
                                                out / "evals" / "simoe" / "metrics.json",
                                                out / "evals" / "base" / "metrics.json")}
    second = pt.main(argv)
    assert second["rows"] == {"base": {"train": "none (base)", "eval": "reused"},
                              "simoe": {"train": "reused", "eval": "reused"}}
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    assert (out / "table1.md").read_text() == table1  # fixed bootstrap seed

    changed = [a if a != "2" or argv[i - 1] != "--steps" else "3" for i, a in enumerate(argv)]
    with pytest.raises(SystemExit, match="trained with other settings: --max-steps: 2 -> 3"):
        pt.main(changed)  # a finished row is never silently reused for another budget

    # The records (small, committed) rebuild both rows on a "fresh machine": nothing retrained.
    assert sorted(p.name for p in (records / "training" / "simoe").iterdir()) == [
        "final_stats.json", "job.json", "metrics.jsonl"]
    assert (records / "table1.md").read_text() == table1
    fresh = tmp_path / "fresh"
    moved = [str(fresh) if a == str(out) else a for a in argv]
    third = pt.main(moved)
    assert third["rows"] == {"base": {"train": "none (base)", "eval": "reused"},
                             "simoe": {"train": "reused", "eval": "reused"}}
    assert "simoe: restored from" in capsys.readouterr().out
    assert (fresh / "table1.md").read_text() == table1
    assert not list((fresh / "runs" / "simoe").glob("*.safetensors"))  # no weights came back
    # Records of other settings are not restored (no weights to evaluate): the row is redone.
    other = tmp_path / "other"
    other_eval = [str(other) if a == str(fresh) else "5" if moved[i - 1] == "--max-new-tokens"
                  else a for i, a in enumerate(moved)]
    fourth = pt.main(other_eval)
    assert fourth["rows"] == {"base": {"train": "none (base)", "eval": "evaluated"},
                              "simoe": {"train": "trained", "eval": "evaluated"}}
    assert "restored from" not in capsys.readouterr().out
    # A partial invocation never shrinks the committed tables.
    pt.main([*moved[:moved.index("--rows") + 1], "base", *moved[moved.index("--rows") + 2:]])
    assert "| SIMoE |" in (records / "table1.md").read_text()


def test_committed_evaluation_records_still_match_an_fp32_invocation():
    """Markers written before EvalJob had a dtype (the committed 128-step rows) equal the record
    an fp32 invocation writes now, so --records keeps restoring them."""
    pt = _load_script()
    root = SCRIPT.parent / "results" / "paper_tables_128"
    marker = json.loads((root / "evals" / "full" / pt.EVAL_MARKER).read_text())
    assert "dtype" not in marker["job"]
    args = pt.parse_args(["--steps", "128", "--model", "x.gguf", "--data", marker["job"]["data"]])
    run = root / "training" / "full"
    _, record = pt._eval_job(marker["job"]["model"], Path("evals/full"), args, run)
    assert record == marker


def test_bootstrap_is_paired_and_matches_the_point_estimate():
    pt = _load_script()
    per_task = {
        row: {f"t{i}": {"category": "A" if i < 3 else "B", "rougeL": float(i + shift)}
              for i in range(6)}
        for row, shift in (("full", 0.0), ("simoe", 2.0))}
    boot = pt.bootstrap(per_task, resamples=500, seed=0)
    # mean over categories of the mean over their tasks: A = 1, B = 4 -> 2.5 (and 4.5)
    assert np.allclose(boot["avg_point"], [2.5, 4.5])
    delta, lo, hi = pt.paired_delta(boot, "simoe", "full")
    assert np.allclose([delta, lo, hi], 2.0)  # same resampled tasks for both rows: no spread
    lo, hi = pt.interval(boot["avg_samples"][0])
    assert lo < 2.5 < hi
