"""Evaluation: SNI metrics, batched generation, `simoe eval` and `simoe report`."""

from __future__ import annotations

import json
import string

import pytest
import torch
from rouge_score import rouge_scorer

from conftest import SNI_MINI, STORIES, needs_shared
from simoe import SIMoEConfig, SIMoEModel
from simoe.cli import main
from simoe.data import Example, encode_prompts
from simoe.evaluation import EvalJob, LoadedModel, aggregate, exact_match, generate, rouge_l
from simoe.evaluation.generation import load_for_eval

CASES = [
    ("The cat sat on the mat.", ["the cat sat on the mat"]),          # case, punctuation
    ("", ["something"]),                                             # empty prediction
    ("running dogs", ["the dog runs", "dogs ran"]),                  # stemming, multi-ref
    ("Yes", ["No", "yes"]),                                          # best of the references
    ("positive", ["negative"]),
    ("a b c d", ["a c", "b d e f g"]),
    ("Paris, France", [""]),                                         # empty reference
]


def _reference_script(pred, golds):
    """The official script's logic, written out independently (default track)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)

    def norm(s):
        s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
        return " ".join(s.split())

    rl = max(scorer.score(prediction=pred, target=g)["rougeL"].fmeasure for g in golds)
    em = max(float(norm(pred) == norm(g)) for g in golds)
    return 100.0 * rl, 100.0 * em


@pytest.mark.parametrize("pred, refs", CASES)
def test_metrics_equal_the_reference_script(pred, refs):
    want_rl, want_em = _reference_script(pred, refs)
    assert rouge_l(pred, refs) == pytest.approx(want_rl, abs=1e-9)
    assert exact_match(pred, refs) == want_em


def test_stemming_and_exact_match_values():
    assert rouge_l("running dogs", ["dogs ran"]) == pytest.approx(50.0)  # "run" != "ran"
    assert rouge_l("dogs running", ["dog runs"]) == pytest.approx(100.0)
    assert exact_match("The cat sat on the mat.", ["the cat sat on the mat"]) == 100.0


def test_aggregate_means_per_task_then_category_then_overall():
    recs = [
        {"task": "t1", "category": "A", "rougeL": 100.0, "exact_match": 100.0},
        {"task": "t1", "category": "A", "rougeL": 0.0, "exact_match": 0.0},
        {"task": "t2", "category": "A", "rougeL": 20.0, "exact_match": 0.0},
        {"task": "t3", "category": "B", "rougeL": 80.0, "exact_match": 100.0},
    ]
    m = aggregate(recs)
    assert m["per_task"]["t1"]["rougeL"] == 50.0
    assert m["per_category"]["A"]["rougeL"] == pytest.approx(35.0)  # mean of 50 and 20
    assert m["overall"]["rougeL"] == pytest.approx((35.0 + 80.0) / 2)
    assert m["overall"]["exact_match"] == pytest.approx((25.0 + 100.0) / 2)
    assert (m["overall"]["n"], m["overall"]["tasks"], m["overall"]["categories"]) == (4, 3, 2)


PROMPTS = ["Once upon a time, there was a little", "The dog", "Lily and Ben went to the park and",
           "One day"]


@needs_shared
@pytest.mark.parametrize("kind", ["transformers", "simoe"])
def test_batched_left_padded_generation_equals_one_by_one(stories, kind):
    base, tok = stories
    model = base
    if kind == "simoe":
        model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=3))
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for _, gd in model.gated_deltas():
                gd.delta.copy_(0.05 * torch.randn(gd.delta.shape, generator=g))
            for p in model.router.parameters():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    loaded = LoadedModel(model.eval(), tok, kind)
    prompts = encode_prompts([Example(p, "") for p in PROMPTS], tok, 64)
    batched = generate(loaded, prompts, batch_size=4, max_new_tokens=12, progress=False)
    single = [generate(loaded, [p], batch_size=1, max_new_tokens=12, progress=False)[0]
              for p in prompts]
    assert [b["prediction"] for b in batched] == [s["prediction"] for s in single]
    assert len({b["prediction"] for b in batched}) > 1
    if kind == "simoe":
        for b, s in zip(batched, single, strict=True):
            assert b["alpha"] == pytest.approx(s["alpha"], abs=1e-5)
        assert batched[0]["alpha"] != pytest.approx(batched[1]["alpha"], abs=1e-3)


@needs_shared
def test_simoe_eval_and_report_on_sni_mini(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--max-source-len", "200", "--batch-size", "8"]
    assert main(["train", "--model", str(STORIES), "--data", str(SNI_MINI), "--output", str(run),
                 "--max-steps", "4", "--max-instances-per-task", "4", "--max-target-len", "16",
                 *common]) == 0
    evals = {}
    for name, model in (("base", str(STORIES)), ("simoe", str(run)), ("simoe_bf16", str(run))):
        out = tmp_path / f"eval-{name}"
        dtype = ["--dtype", "bf16"] if name.endswith("bf16") else []
        assert main(["eval", "--model", model, "--data", str(SNI_MINI), "--output", str(out),
                     "--max-instances", "2", "--max-new-tokens", "8", *common, *dtype]) == 0
        assert {p.name for p in out.iterdir()} == {"predictions.jsonl", "metrics.json",
                                                    "report.md"}
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["overall"]["categories"] == 12
        assert len(metrics["per_task"]) == 33
        preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert len(preds) == 66
        assert all(0.0 <= p["rougeL"] <= 100.0 for p in preds)
        assert ("alpha" in preds[0]) == name.startswith("simoe")
        assert metrics["dtype"] == ("bf16" if dtype else "fp32")
        if name.startswith("simoe"):
            assert len(preds[0]["alpha"]) == 8 and sum(preds[0]["alpha"]) == pytest.approx(1.0)
        evals[name] = out
    # a bf16 base routes and generates close to fp32: alpha to bf16's precision, most texts
    fp32, bf16 = ([json.loads(x) for x in (evals[n] / "predictions.jsonl").read_text().splitlines()]
                  for n in ("simoe", "simoe_bf16"))
    for a, b in zip(fp32, bf16, strict=True):
        assert b["alpha"] == pytest.approx(a["alpha"], abs=0.02)
    assert any(a["alpha"] != b["alpha"] for a, b in zip(fp32, bf16, strict=True))
    loaded = load_for_eval(str(run), dtype=torch.bfloat16)
    assert loaded.model.dtype == torch.bfloat16
    assert {p.dtype for _, gd in loaded.model.gated_deltas() for p in gd.parameters()} \
        == {torch.float32}
    same = sum(a["prediction"] == b["prediction"] for a, b in zip(fp32, bf16, strict=True))
    assert same >= 0.5 * len(fp32), same
    report = tmp_path / "table.md"
    capsys.readouterr()
    assert main(["report", str(evals["base"]), str(evals["simoe"]), "--output", str(report),
                 "--names", "base,simoe"]) == 0
    table = report.read_text()
    assert "Textual Entailment" in table and "Word Analogy" in table and "Avg." in table
    rows = [ln for ln in table.splitlines() if ln.startswith("| base") or ln.startswith("| simoe")]
    assert len(rows) == 2
    assert rows[1].split("|")[-2].strip() != "–"  # stored parameters from final_stats.json


@needs_shared
def test_eval_errors_are_clear(tmp_path, capsys):
    out = str(tmp_path / "e")
    assert main(["eval", "--model", str(STORIES), "--data", str(SNI_MINI), "--output", out,
                 "--split", "dev"]) == 2
    assert "dev" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["eval", "--model", str(STORIES), "--data", str(empty), "--output", out]) == 2
    assert "no valid records" in capsys.readouterr().err
    sni = tmp_path / "sni"
    (sni / "tasks").mkdir(parents=True)
    (sni / "splits").mkdir()
    (sni / "splits" / "test_tasks.txt").write_text("")
    assert main(["eval", "--model", str(STORIES), "--data", str(sni), "--output", out]) == 2
    assert "no instances" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(STORIES), "--data", str(SNI_MINI), "--output", out,
              "--dtype", "fp16"])
    with pytest.raises(ValueError, match="--dtype must be one of fp32, bf16"):
        EvalJob(model="m", data="d", output="o", dtype="fp16")
    (tmp_path / "notamodel").mkdir()
    assert main(["eval", "--model", str(tmp_path / "notamodel"), "--data", str(SNI_MINI),
                 "--output", out]) == 2
    assert "neither a SIMoE run" in capsys.readouterr().err


def test_prompt_budget_fits_the_model_positions():
    from conftest import tiny_model
    from simoe.runtime import fit_source_length

    model = tiny_model("llama")  # 64 positions
    assert fit_source_length(model, 40, 16) == 40
    assert fit_source_length(model, 1024, 16) == 48
    assert fit_source_length(model, 1024, 100) == 1
