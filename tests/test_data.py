"""Tests of simoe.data on the real sni-mini subset and the real stories260K tokenizer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from simoe.data import (
    IGNORE_INDEX,
    DataError,
    EncodedExample,
    Example,
    SIMoECollator,
    build_task_ids,
    encode_example,
    encode_examples,
    encode_prompt,
    load_examples,
    load_jsonl,
    load_sni,
    read_split,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SNI = SHARED / "data" / "sni-mini"
MODEL = SHARED / "models" / "stories260K"

needs_sni = pytest.mark.skipif(
    not (SNI / "tasks").is_dir(), reason=f"sni-mini not found at {SNI} (shared data absent)"
)
needs_model = pytest.mark.skipif(
    not (MODEL / "tokenizer.json").is_file(),
    reason=f"stories260K tokenizer not found at {MODEL} (shared model absent)",
)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Spain?"},
    {"role": "assistant", "content": "Madrid, I think."},
]


@pytest.fixture(scope="module")
def tok():
    if not (MODEL / "tokenizer.json").is_file():
        pytest.skip(f"stories260K tokenizer not found at {MODEL}")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(MODEL))
    tokenizer.pad_token = tokenizer.eos_token  # no pad token in this model
    tokenizer.chat_template = CHAT_TEMPLATE  # no chat template either
    return tokenizer


@pytest.fixture(scope="module")
def sni_train():
    if not (SNI / "tasks").is_dir():
        pytest.skip(f"sni-mini not found at {SNI}")
    return load_sni(SNI, "train")


def _supervised_runs(enc: EncodedExample) -> list[list[int]]:
    runs, cur = [], []
    for token, label in zip(enc.input_ids, enc.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            cur.append(token)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def _write_jsonl(path: Path, lines: list) -> Path:
    path.write_text(
        "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n",
        encoding="utf-8",
    )
    return path


def _make_sni(root: Path, tasks: dict[str, str | dict]) -> Path:
    """Write an SNI-layout directory; a str value is written verbatim as the task file."""
    (root / "tasks").mkdir(parents=True)
    (root / "splits").mkdir()
    for name, content in tasks.items():
        text = content if isinstance(content, str) else json.dumps(content, indent=1)
        (root / "tasks" / f"{name}.json").write_text(text, encoding="utf-8")
    (root / "splits" / "train_tasks.txt").write_text("\n".join(tasks) + "\n", encoding="utf-8")
    return root


def _task(instances: list, **overrides) -> dict:
    task = {
        "Categories": ["Misc."],
        "Definition": ["Repeat the input"],
        "Domains": ["Toys"],
        "Positive Examples": [{"input": "a", "output": "a"}],
        "Instances": instances,
    }
    task.update(overrides)
    return task


ONE_INSTANCE = [{"id": "t-0", "input": "x", "output": ["x"]}]


def _without(task: dict, key: str) -> dict:
    return {k: v for k, v in task.items() if k != key}


# --------------------------------------------------------------------------- SNI (real data)


@needs_sni
def test_sni_counts_order_and_categories(sni_train):
    train_tasks = read_split(SNI, "train")
    assert len(train_tasks) == 41
    assert len(sni_train) == 1899  # no task has more than 80 instances: the cap of 100 is inert
    assert list(dict.fromkeys(e.task for e in sni_train)) == train_tasks  # split-file order

    test = load_sni(SNI, "test")
    assert len(test) == 1401
    assert len({e.task for e in test}) == 33
    assert len({e.category for e in test}) == 12
    assert "Textual Entailment" in {e.category for e in test}

    capped = load_sni(SNI, "train", max_instances_per_task=5)
    assert len(capped) == 41 * 5
    first = [e for e in sni_train if e.task == "task1146_country_capital"][:5]
    assert [e.id for e in capped if e.task == "task1146_country_capital"] == [e.id for e in first]

    by_task = {e.task: e for e in sni_train}
    assert by_task["task1146_country_capital"].category == "Misc."
    assert by_task["task1146_country_capital"].domain == "Countries"
    assert by_task["task833_poem_sentiment_classification"].category == "Sentiment Analysis"


@needs_sni
def test_sni_exact_tk_instruct_prompt(sni_train):
    ex = next(e for e in sni_train if e.id == "task1146-caea1179adc149ffb2a3ecb2ea3abefc")
    expected = (
        "Definition: In this task, you are given a country name and you need to return the "
        "capital city of the given country.\n\n"
        " Positive Example 1-\nInput: United States.\n Output: Washington.\n\n"
        " Positive Example 2-\nInput: India.\n Output: New Delhi.\n\n"
        "Now complete the following example -\nInput: Afghanistan.\nOutput:"
    )
    assert ex.prompt == expected
    assert (ex.completion, ex.references) == ("Kabul", ["Kabul"])

    no_pos = load_sni(SNI, "train", num_pos_examples=0, max_instances_per_task=1)
    ex0 = next(e for e in no_pos if e.task == "task1146_country_capital")
    assert ex0.prompt == (
        "Definition: In this task, you are given a country name and you need to return the "
        "capital city of the given country.\n\n"
        "Now complete the following example -\nInput: Afghanistan.\nOutput:"
    )


@needs_sni
def test_sni_empty_string_reference_is_valid(sni_train, tok):
    ex = next(e for e in sni_train if e.id == "task365-beea6c5ad4d24e1ab6fb29edd22501e4")
    assert ex.references == [""] and ex.completion == ""
    enc = encode_example(ex, tok)
    assert [t for t in enc.labels if t != IGNORE_INDEX] == [tok.eos_token_id]


@needs_sni
def test_sni_unknown_split_and_missing_task_file(tmp_path):
    with pytest.raises(DataError, match=r"unknown split 'dev'.*available: test, train"):
        load_sni(SNI, "dev")
    root = _make_sni(tmp_path / "sni", {"task1_ok": _task([{"input": "x", "output": ["x"]}])})
    (root / "splits" / "train_tasks.txt").write_text("task1_ok\ntask2_gone\n")
    with pytest.raises(DataError, match=r"task2_gone\.json: task file not found"):
        load_sni(root)


# --------------------------------------------------------------------------- SNI (malformed)


def test_sni_invalid_json_names_file_and_line(tmp_path):
    bad = '{\n "Definition": ["d"],\n "Instances": [,]\n}'
    root = _make_sni(tmp_path / "sni", {"task9_bad": bad})
    with pytest.raises(DataError, match=r"task9_bad\.json:3: invalid JSON"):
        load_sni(root)


@pytest.mark.parametrize(
    ("task", "pattern"),
    [
        (_without(_task(ONE_INSTANCE), "Definition"), r"missing 'Definition'"),
        (_task(ONE_INSTANCE, Definition=[""]), r"empty or invalid 'Definition'"),
        ({"Definition": ["d"], "Positive Examples": []}, r"missing or invalid 'Instances'"),
        (
            _task([{"id": "t-0", "input": "x", "output": ["x"]}, {"id": "t-1", "output": ["y"]}]),
            r"instance 1 \(id t-1\): missing 'input'",
        ),
        (
            _task([{"id": "t-0", "input": "x", "output": []}]),
            r"instance 0 \(id t-0\): empty 'output' list",
        ),
        (
            _task(
                [
                    {"id": "t-0", "input": "x", "output": ["x"]},
                    {"id": "t-1", "input": "  ", "output": ["y"]},
                ]
            ),
            r"instance 1 \(id t-1\): empty 'input' \(empty prompt\)",
        ),
    ],
)
def test_sni_malformed_task_raises_with_location(tmp_path, task, pattern):
    root = _make_sni(tmp_path / "sni", {"task7_x": task})
    with pytest.raises(DataError, match=r"task7_x\.json: " + pattern):
        load_sni(root)


def test_sni_skip_invalid_counts_and_logs_once(tmp_path, caplog):
    instances = [
        {"id": "t-0", "input": "one", "output": ["1"]},
        {"id": "t-1", "output": ["2"]},
        {"id": "t-2", "input": "three", "output": []},
        {"id": "t-3", "input": "four", "output": ["4", "IV"]},
    ]
    root = _make_sni(tmp_path / "sni", {"task7_x": _task(instances)})
    with caplog.at_level(logging.WARNING, logger="simoe.data"):
        out = load_sni(root, skip_invalid=True)
    assert [e.id for e in out] == ["t-0", "t-3"]
    assert out[1].references == ["4", "IV"] and out[1].completion == "4"
    assert out.num_skipped == 2
    warnings = [r for r in caplog.records if r.name.startswith("simoe.data")]
    assert len(warnings) == 1 and "skipped 2 invalid instance" in warnings[0].getMessage()
    # the cap counts kept examples, not raw instances
    assert [e.id for e in load_sni(root, skip_invalid=True, max_instances_per_task=1)] == ["t-0"]


# --------------------------------------------------------------------------- JSONL


def test_jsonl_prompt_completion_and_messages(tmp_path):
    path = _write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "2+2=", "completion": "4", "task": "add", "category": "math", "id": 7},
            "",
            {"prompt": "Say hi", "completion": ["hi", "hello"], "domain": "chat"},
            {"messages": CONVERSATION, "source": "tulu/oasst"},
        ],
    )
    out = load_jsonl(path)
    assert len(out) == 3 and out.num_skipped == 0
    assert (out[0].prompt, out[0].completion, out[0].references) == ("2+2=", "4", ["4"])
    assert (out[0].task, out[0].category, out[0].id) == ("add", "math", "7")
    assert out[1].references == ["hi", "hello"] and out[1].completion == "hi"
    assert out[2].messages == CONVERSATION and out[2].completion == "Madrid, I think."
    assert out[2].domain == "tulu/oasst" and out[2].prompt == ""


@pytest.mark.parametrize(
    ("bad_line", "pattern"),
    [
        ('{"prompt": "x", "completion": ', r"invalid JSON"),
        ({"prompt": "x"}, r"missing field 'completion'"),
        ({"completion": "x"}, r"missing field 'prompt'"),
        ({"prompt": "  \n", "completion": "x"}, r"empty prompt"),
        ({"prompt": "x", "completion": []}, r"empty 'completion' list"),
        ({"messages": []}, r"empty 'messages' list"),
        ({"messages": [{"role": "user", "content": "hi"}]}, r"'messages' has no assistant turn"),
    ],
)
def test_jsonl_malformed_raises_with_file_and_line(tmp_path, bad_line, pattern):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "completion": "ok"}, bad_line])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: " + pattern):
        load_jsonl(path)


def test_jsonl_skip_invalid_counts_and_logs_once(tmp_path, caplog):
    path = _write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "a", "completion": "A"},
            "{not json",
            {"prompt": "", "completion": "B"},
            {"prompt": "c", "completion": []},
            {"prompt": "d", "completion": "D"},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="simoe.data"):
        out = load_jsonl(path, skip_invalid=True)
    assert [e.completion for e in out] == ["A", "D"]
    assert out.num_skipped == 3
    assert [s.split(": ")[0].rsplit(":", 1)[1] for s in out.skipped] == ["2", "3", "4"]
    warnings = [r for r in caplog.records if r.name.startswith("simoe.data")]
    assert len(warnings) == 1 and "skipped 3 invalid record" in warnings[0].getMessage()


# --------------------------------------------------------------------------- tokenisation


@needs_model
def test_encode_labels_and_routing_index(tok):
    ex = Example(prompt="Question: capital of Afghanistan?\nOutput:", completion="Kabul")
    enc = encode_example(ex, tok)
    prompt_ids = tok(ex.prompt)["input_ids"]
    n = len(prompt_ids)
    assert prompt_ids[0] == tok.bos_token_id
    assert enc.input_ids[:n] == prompt_ids
    assert enc.labels[:n] == [IGNORE_INDEX] * n
    assert all(t != IGNORE_INDEX for t in enc.labels[n:])
    assert enc.labels[n:] == enc.input_ids[n:]
    assert enc.input_ids[-1] == tok.eos_token_id
    assert tok.decode(enc.input_ids[n:-1]) == "Kabul"
    # routing index: last prompt token == the token right before the first label
    assert enc.routing_index == n - 1
    assert enc.labels[enc.routing_index] == IGNORE_INDEX
    assert enc.labels[enc.routing_index + 1] != IGNORE_INDEX
    assert not enc.truncated and not enc.target_truncated


@needs_model
def test_left_truncation_keeps_bos_and_prompt_end_and_warns_once(tok, caplog):
    long_prompt = "Definition: " + "lots of words here " * 40 + "\nInput: cat.\nOutput:"
    long_ex = Example(prompt=long_prompt, completion="dog")
    short_ex = Example(prompt="Input: hi.\nOutput:", completion="yo")
    full = tok(long_prompt)["input_ids"]
    assert len(full) > 60

    enc = encode_example(long_ex, tok, max_source_len=32)
    assert enc.truncated and enc.routing_index == 31
    assert enc.input_ids[0] == tok.bos_token_id
    assert enc.input_ids[1:32] == full[-31:]  # the end of the prompt survives
    assert tok.decode(enc.input_ids[:32]).endswith("\nInput: cat.\nOutput:")
    assert enc.labels[:32] == [IGNORE_INDEX] * 32 and enc.labels[32] != IGNORE_INDEX

    with caplog.at_level(logging.WARNING, logger="simoe.data"):
        out = encode_examples([long_ex, short_ex, long_ex], tok, max_source_len=32)
    assert out.num_truncated == 2
    assert [e.truncated for e in out] == [True, False, True]
    warnings = [r for r in caplog.records if r.name.startswith("simoe.data")]
    assert len(warnings) == 1 and "2 of 3 prompts left-truncated" in warnings[0].getMessage()

    prompt_only = encode_prompt(long_ex, tok, max_source_len=32)
    assert prompt_only.input_ids == enc.input_ids[:32] and prompt_only.labels is None
    assert prompt_only.routing_index == 31


@needs_model
def test_target_truncation_keeps_eos_in_budget(tok):
    ex = Example(prompt="Input: x.\nOutput:", completion="a very long answer " * 10)
    enc = encode_example(ex, tok, max_target_len=5)
    supervised = [t for t in enc.labels if t != IGNORE_INDEX]
    assert len(supervised) == 5 and supervised[-1] == tok.eos_token_id
    assert enc.target_truncated and not enc.truncated


# --------------------------------------------------------------------------- collator


@needs_model
def test_collator_right_and_left_padding(tok):
    examples = [
        Example(prompt="Input: a short one.\nOutput:", completion="yes", task="t2"),
        Example(
            prompt="Input: a much longer prompt with words.\nOutput:",
            completion="no way",
            task="t1",
        ),
    ]
    task_ids = build_task_ids(examples)
    assert task_ids == {"t1": 0, "t2": 1}
    encs = encode_examples(examples, tok, task_ids=task_ids)
    lengths = [len(e.input_ids) for e in encs]
    assert lengths[0] < lengths[1]
    width = max(lengths)

    right = SIMoECollator(tok)(encs)
    assert right["input_ids"].shape == (2, width)
    assert right["routing_index"].tolist() == [e.routing_index for e in encs]
    assert right["task_ids"].tolist() == [1, 0]
    for i, e in enumerate(encs):
        n = len(e.input_ids)
        assert right["attention_mask"][i].tolist() == [1] * n + [0] * (width - n)
        assert right["labels"][i].tolist() == e.labels + [IGNORE_INDEX] * (width - n)
        assert right["input_ids"][i, n:].eq(tok.pad_token_id).all()
        r = int(right["routing_index"][i])
        assert right["labels"][i, r] == IGNORE_INDEX and right["labels"][i, r + 1] != IGNORE_INDEX

    left = SIMoECollator(tok, padding_side="left", pad_to_multiple_of=8)(encs)
    padded = -(-width // 8) * 8
    assert left["input_ids"].shape == (2, padded)
    for i, e in enumerate(encs):
        pad = padded - len(e.input_ids)
        assert left["attention_mask"][i].tolist() == [0] * pad + [1] * len(e.input_ids)
        assert left["labels"][i].tolist() == [IGNORE_INDEX] * pad + e.labels
        assert int(left["routing_index"][i]) == e.routing_index + pad
        assert left["input_ids"][i, e.routing_index + pad] == e.input_ids[e.routing_index]

    # generation prompts: no labels, routing index = last (non-pad) token = last column
    prompts = [encode_prompt(x, tok) for x in examples]
    gen = SIMoECollator(tok, padding_side="left")(prompts)
    assert "labels" not in gen and "task_ids" not in gen
    assert gen["routing_index"].tolist() == [gen["input_ids"].shape[1] - 1] * 2
    assert gen["input_ids"][:, -1].tolist() == [p.input_ids[-1] for p in prompts]

    # dicts are accepted too
    as_dicts = SIMoECollator(tok)([e.to_dict() for e in encs])
    assert as_dicts["input_ids"].equal(right["input_ids"])


def test_collator_requires_pad_token():
    class NoPad:
        pad_token_id = None

    enc = EncodedExample(input_ids=[1, 5, 6], labels=[-100, -100, 6], routing_index=1)
    with pytest.raises(ValueError, match="no pad token"):
        SIMoECollator(NoPad())([enc])


# --------------------------------------------------------------------------- chat messages


@needs_model
def test_messages_loss_only_on_assistant_turns(tok):
    ex = Example(prompt="", completion="Madrid, I think.", messages=CONVERSATION)
    enc = encode_example(ex, tok)
    assert enc.input_ids[0] == tok.bos_token_id
    runs = _supervised_runs(enc)
    assistants = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert [tok.decode(r, skip_special_tokens=True) for r in runs] == assistants
    assert all(r[-1] == tok.eos_token_id for r in runs)  # end-of-turn marker is supervised
    first_label = next(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
    assert enc.routing_index == first_label - 1
    assert tok.decode(enc.input_ids[: enc.routing_index + 1]).endswith(
        "Capital of France?<|assistant|>\n"
    )

    prompt = encode_prompt(ex, tok)
    assert tok.decode(prompt.input_ids).endswith("And of Spain?<|assistant|>\n")
    assert prompt.routing_index == len(prompt.input_ids) - 1

    # the first prompt part is left-truncated to max_source_len (BOS kept); total <= S + T
    short = encode_example(ex, tok, max_source_len=8, max_target_len=12)
    assert short.truncated and short.target_truncated
    assert short.input_ids[0] == tok.bos_token_id and short.routing_index == 7
    assert len(short.input_ids) == 20
    assert short.input_ids[1:8] == enc.input_ids[first_label - 7 : first_label]
    assert short.labels[8] != IGNORE_INDEX


@needs_model
def test_messages_need_a_chat_template(tok, monkeypatch):
    monkeypatch.setattr(tok, "chat_template", None)
    ex = Example(prompt="", completion="Paris.", messages=CONVERSATION[:3])
    with pytest.raises(ValueError, match="chat template"):
        encode_example(ex, tok)


# --------------------------------------------------------------------------- load_examples


@needs_sni
def test_load_examples_dispatches_sni_and_jsonl(tmp_path):
    sni = load_examples(str(SNI), "test", max_instances_per_task=2)
    assert len(sni) == 66 and sni[0].task == read_split(SNI, "test")[0]
    path = _write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "completion": "c"}])
    assert [e.completion for e in load_examples(str(path))] == ["c"]


def test_load_examples_hf_datasets_paths(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [
        {"prompt": "Input: 1.\nOutput:", "completion": "one", "task": "num"},
        {"prompt": "Input: 2.\nOutput:", "completion": "two", "task": "num"},
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    out = load_examples(str(tmp_path / "saved"))
    assert [(e.prompt, e.completion, e.task) for e in out] == [
        (r["prompt"], r["completion"], r["task"]) for r in rows
    ]

    chat = datasets.Dataset.from_list([{"id": "c0", "messages": CONVERSATION}])
    datasets.DatasetDict({"train": chat, "validation": chat}).save_to_disk(str(tmp_path / "dd"))
    got = load_examples(str(tmp_path / "dd"), hf_split="validation")
    assert got[0].messages == CONVERSATION and got[0].id == "c0"
    with pytest.raises(DataError, match=r"no split 'test' \(available: train, validation\)"):
        load_examples(str(tmp_path / "dd"), "test")

    # the packaged "json" builder of datasets.load_dataset (local files, no network)
    path = _write_jsonl(tmp_path / "rows.jsonl", rows + [{"prompt": "Input: 3.\nOutput:"}])
    kwargs = {"data_files": str(path), "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(DataError, match=r"row 2: missing field 'completion'"):
        load_examples("json", hf_kwargs=kwargs)
    got = load_examples("json", hf_kwargs=kwargs, skip_invalid=True)
    assert [e.completion for e in got] == ["one", "two"] and got.num_skipped == 1


def test_load_examples_missing_path_is_a_clear_error(tmp_path):
    for source in (str(tmp_path / "nope.jsonl"), str(tmp_path / "no_dir"), "data/nope.jsonl"):
        with pytest.raises(DataError, match="no such file or directory"):
            load_examples(source)
