"""`simoe demo --quick`: the whole pipeline, end to end, in the test suite."""

from __future__ import annotations

import json

from simoe.cli import main
from simoe.demo import METHODS


def test_quick_demo_runs_the_whole_story(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Unseen categories" in printed and "| simoe |" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["simoe_sparsity"] >= summary["target_sparsity"] - 0.01
    for method in METHODS:
        for split in ("test", "seen"):
            metrics = json.loads((out / "eval" / f"{method}-{split}" / "metrics.json").read_text())
            assert metrics["overall"]["n"] > 0 and metrics["per_category"]
        assert (out / "runs" / method / "final_stats.json").is_file()
    report = (out / "report.md").read_text()
    assert "Seen categories" in report and "Avg." in report
    figures = out / "analysis"
    for name in ("report.md", "report.html", "simoe_overlap.png", "simoe_training_curves.png",
                 "comparison.png"):
        assert (figures / name).stat().st_size > 0, name
