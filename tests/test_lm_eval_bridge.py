"""The lm-evaluation-harness bridge (`lm_eval --model simoe`): a local multiple-choice task built
from ../shared/data/sni instances, log-likelihoods against a hand computation through
SIMoEModel, and the routing position (the context's last token, never the continuation's)."""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch
from transformers import AutoTokenizer

from conftest import SHARED, SNI_MINI, STORIES, needs_shared
from simoe import SIMoEModel

lm_eval = pytest.importorskip("lm_eval", reason='lm-eval not installed (pip install "simoe[eval]")')

SNI_TASK = SHARED / "data" / "sni" / "tasks" / "task020_mctaco_span_based_question.json"
TASK_NAME = "simoe_sni_yesno"
JOB = dict(model=str(STORIES), data=str(SNI_MINI), max_steps=2, max_source_len=96,
           max_target_len=8, max_instances_per_task=2, batch_size=2, experts=2, lr=1e-2,
           logging_steps=1, save_steps=1000)
pytestmark = needs_shared


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step SIMoE run (2 experts) of stories260K on sni-mini."""
    from simoe.training import TrainJob, train

    return train(TrainJob(output=str(tmp_path_factory.mktemp("run")), **JOB))


@pytest.fixture(scope="module")
def lm(run):
    from simoe.serving.lm_eval_model import SIMoELM

    return SIMoELM(run=str(run), batch_size=3)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """An lm-eval multiple-choice task over 4 SNI yes/no instances, as a local JSON file."""
    root = tmp_path_factory.mktemp("tasks")
    sni = json.loads(SNI_TASK.read_text())
    definition = sni["Definition"][0].split(".")[0] + "."
    rows = []
    for inst in sni["Instances"][:4]:
        rows.append({"definition": definition, "input": inst["input"][:160],
                     "choices": ["Yes", "No"],
                     "label": 0 if inst["output"][0].lower().startswith("yes") else 1})
    data = root / "yesno.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / f"{TASK_NAME}.yaml").write_text(
        f"task: {TASK_NAME}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {root / 'hf'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Definition: {{definition}}\\nInput: {{input}}\\nOutput:"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n")
    return root


def _hand_loglikelihood(model: SIMoEModel, tok, context: str, continuation: str,
                        route_on_whole: bool = False) -> tuple[float, torch.Tensor]:
    """sum log P(continuation | context), alpha from route(context) (or, to show the
    difference, from route(context + continuation))."""
    ctx = tok(context).input_ids
    cont = tok(context + continuation).input_ids[len(ctx):]
    whole = torch.tensor([ctx + cont])
    with torch.no_grad():
        alpha = model.route(whole if route_on_whole else torch.tensor([ctx]))[0]
        logits = model(whole, alpha=alpha).logits[0].float()
    logp = torch.log_softmax(logits[len(ctx) - 1:len(ctx) - 1 + len(cont)], dim=-1)
    return logp.gather(-1, torch.tensor(cont)[:, None]).sum().item(), alpha


def test_registered_as_simoe_and_cli_module():
    from lm_eval.api.registry import get_model

    import simoe.serving.lm_eval_model as bridge

    assert get_model("simoe") is bridge.SIMoELM
    assert callable(bridge.main)


def test_missing_lm_eval_is_one_line(monkeypatch):
    import simoe.serving.lm_eval_model as bridge

    monkeypatch.setitem(sys.modules, "lm_eval.api.model", None)
    monkeypatch.delitem(sys.modules, "simoe.serving.lm_eval_model")
    with pytest.raises(ImportError) as err:
        importlib.import_module("simoe.serving.lm_eval_model")
    assert 'pip install "simoe[eval]"' in str(err.value)
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "simoe.serving.lm_eval_model", bridge)


def test_simple_evaluate_matches_hand_loglikelihoods_routed_on_the_context(lm, run, task_dir):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input_ids, alpha) of each forward

    def record(_module, args, kwargs):
        seen.append((kwargs["input_ids"].clone(), kwargs["alpha"].clone()))

    handle = lm.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        out = simple_evaluate(model=lm, tasks=[TASK_NAME], limit=4, log_samples=True,
                              task_manager=TaskManager(include_path=str(task_dir),
                                                           include_defaults=False))
    finally:
        handle.remove()
    assert 0.0 <= out["results"][TASK_NAME]["acc,none"] <= 1.0
    samples = out["samples"][TASK_NAME]
    assert len(samples) == 4

    model = SIMoEModel.from_pretrained(run).eval()
    tok = AutoTokenizer.from_pretrained(run)
    differs = 0
    requests = 0
    for sample in samples:
        for args, resp in zip(sample["arguments"], sample["resps"], strict=True):
            context, continuation = (args["arg_0"], args["arg_1"]) \
                if isinstance(args, dict) else args
            got = float(resp[0][0])
            want, alpha = _hand_loglikelihood(model, tok, context, continuation)
            assert got == pytest.approx(want, abs=1e-5, rel=1e-5), (context, continuation)
            whole, alpha_whole = _hand_loglikelihood(model, tok, context, continuation, True)
            # alpha moves by ~0.3 here, the log-likelihood by up to ~5e-4 after 2 steps
            differs += abs(whole - want) > 5e-5 and (alpha - alpha_whole).abs().max() > 1e-2
            requests += 1
            # the alpha the bridge used for this request's row is route(context)
            ids = tok(context + continuation).input_ids[:-1]
            rows = [a for inp, a_batch in seen for inp_row, a in zip(inp, a_batch, strict=True)
                    if inp_row[:len(ids)].tolist() == ids]
            assert rows and all(torch.allclose(a, alpha, atol=1e-6) for a in rows)
    assert requests == 8
    assert differs >= 1, "routing on context+continuation should change some log-likelihood"


def test_cli_entry_runs_the_task(run, task_dir, capsys):
    from simoe.cli import main

    code = main(["lm-eval", str(run), "--batch_size", "4", "--include_path", str(task_dir),
                 "--tasks", TASK_NAME, "--limit", "2", "--model_args", "dtype=float32"])
    assert code == 0
    assert TASK_NAME in capsys.readouterr().out


@pytest.mark.parametrize("argv, says", [
    (["lm-eval", "/no/such/run", "--tasks", TASK_NAME], "does not exist"),
    (["lm-eval", "RUN", "--model", "hf", "--tasks", TASK_NAME], "--model is set"),
])
def test_cli_user_errors(run, argv, says, capsys):
    from simoe.cli import main

    code = main([str(run) if a == "RUN" else a for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1


def test_generate_until_routes_on_the_prompt(lm, run):
    from lm_eval.api.instance import Instance

    prompts = ["Once upon a time, there was a little", "The cat sat on the"]
    gen = {"until": ["."], "max_gen_toks": 12, "do_sample": False}
    requests = [Instance("generate_until", {}, (p, dict(gen)), i)
                for i, p in enumerate(prompts)]
    got = lm.generate_until(requests)

    model = SIMoEModel.from_pretrained(run).eval()
    tok = AutoTokenizer.from_pretrained(run)
    for prompt, text in zip(prompts, got, strict=True):
        ids = torch.tensor([tok(prompt).input_ids])
        alpha = model.route(ids)[0]
        out = model.generate(ids, alpha=alpha, max_new_tokens=12, do_sample=False,
                             pad_token_id=tok.eos_token_id)
        want = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split(".")[0]
        assert text == want
        assert text.strip()


def test_loglikelihood_rolling_routes_on_the_first_window(lm, run):
    from lm_eval.api.instance import Instance

    text = "Once upon a time, there was a little girl named Lily."
    (got,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    model = SIMoEModel.from_pretrained(run).eval()
    tok = AutoTokenizer.from_pretrained(run)
    toks = tok(text).input_ids  # BOS + text; lm-eval prefixes one more BOS
    ids = torch.tensor([[tok.bos_token_id] + toks])
    with torch.no_grad():
        alpha = model.route(ids)[0]
        logp = torch.log_softmax(model(ids[:, :-1], alpha=alpha).logits[0].float(), -1)
    want = logp.gather(-1, ids[0, 1:, None]).sum().item()
    assert got == pytest.approx(want, abs=1e-5, rel=1e-5)
