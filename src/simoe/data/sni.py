"""Super-NaturalInstructions (SNI) task files rendered with the Tk-Instruct prompt.

Expected layout (as in allenai/natural-instructions and ``shared/data/sni-mini``)::

    root/tasks/<task>.json          SNI task files
    root/splits/<split>_tasks.txt   task names, one per line, in order
    root/categories.json            optional: task name -> category
"""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simoe.data.records import DataError, Example, ExampleList

logger = logging.getLogger(__name__)


def _end_with_punct(text: str) -> str:
    """Tk-Instruct rule: append "." unless the text already ends with punctuation."""
    return text if text and text[-1] in string.punctuation else text + "."


def render_tk_instruct_prompt(
    definition: str,
    positive_examples: Sequence[Mapping[str, Any]],
    instance_input: str,
    num_pos_examples: int = 2,
) -> str:
    """Render the Tk-Instruct source text (definition + positive examples + instance).

    Follows ``DataCollatorForNI`` of yizhongw/Tk-Instruct (``src/ni_collator.py``) with
    ``add_task_definition=True``, ``num_pos_examples=k``, no negative examples, no explanations,
    no task name. With ``P(s)`` = ``s.strip()`` plus ``"."`` if it does not already end with a
    character of ``string.punctuation``, the text is::

        "Definition: " + P(definition) + "\\n\\n"
        for i, ex in enumerate(positive_examples[:k], 1):
            " Positive Example {i}-\\n" + "Input: " + P(ex.input) + "\\n"
            + " Output: " + P(ex.output) + "\\n" + "\\n"
        "Now complete the following example -\\n" + "Input: " + P(input) + "\\n" + "Output:"

    (the leading spaces before "Positive Example" and the positive "Output:" are in the
    original). Two deliberate differences from the original: the source ends with ``"Output:"``
    instead of ``"Output: "`` — the space is put in front of the completion when the prompt and
    completion are joined (see :func:`simoe.data.tokenize.completion_separator`), because a
    trailing space is a poor token boundary for decoder-only models; and positive examples are
    never dropped to fit the source length (over-long prompts are left-truncated at
    tokenisation instead, see :func:`simoe.data.tokenize.encode_example`).
    """
    parts = ["Definition: " + _end_with_punct(definition.strip()) + "\n\n"]
    for i, ex in enumerate(positive_examples[:num_pos_examples], start=1):
        parts.append(
            f" Positive Example {i}-\n"
            + "Input: "
            + _end_with_punct(str(ex["input"]).strip())
            + "\n"
            + " Output: "
            + _end_with_punct(str(ex["output"]).strip())
            + "\n"
            + "\n"
        )
    parts.append(
        "Now complete the following example -\n"
        + "Input: "
        + _end_with_punct(instance_input.strip())
        + "\n"
        + "Output:"
    )
    return "".join(parts)


def available_splits(root: str | Path) -> list[str]:
    """Names of the splits in ``root/splits`` (``<name>_tasks.txt``)."""
    return sorted(p.name[: -len("_tasks.txt")] for p in Path(root, "splits").glob("*_tasks.txt"))


def read_split(root: str | Path, split: str) -> list[str]:
    """Task names of ``split`` in file order (blank lines and ``#`` comments ignored)."""
    path = Path(root, "splits", f"{split}_tasks.txt")
    if not path.is_file():
        avail = ", ".join(available_splits(root)) or "none"
        raise DataError(f"{Path(root)}: unknown split {split!r} (available: {avail})")
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            names.append(name)
    return names


def _first(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def _load_task_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise DataError(f"{path}: task file not found") from err
    try:
        task = json.loads(text)  # upstream files contain NaN in "URL"; Python accepts it.
    except json.JSONDecodeError as err:
        raise DataError(
            f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno})"
        ) from err
    if not isinstance(task, dict):
        raise DataError(f"{path}: expected a JSON object at top level")
    return task


def _task_definition(task: Mapping[str, Any], path: Path) -> str:
    if "Definition" not in task:
        raise DataError(f"{path}: missing 'Definition'")
    definition = _first(task["Definition"])
    if definition is None or not definition.strip():
        raise DataError(f"{path}: empty or invalid 'Definition'")
    return definition


def _task_positives(task: Mapping[str, Any], path: Path, k: int) -> list[Mapping[str, Any]]:
    positives = task.get("Positive Examples", [])
    if not isinstance(positives, list):
        raise DataError(f"{path}: 'Positive Examples' must be a list")
    for i, ex in enumerate(positives[:k]):
        if not isinstance(ex, Mapping) or not all(
            isinstance(ex.get(key), str) for key in ("input", "output")
        ):
            raise DataError(f"{path}: Positive Examples[{i}] needs string 'input' and 'output'")
    return positives[:k]


def _instance(inst: Any, idx: int, path: Path) -> tuple[str, list[str], str | None]:
    where = f"{path}: instance {idx}"
    if not isinstance(inst, Mapping):
        raise DataError(f"{where}: expected an object")
    inst_id = inst.get("id")
    if inst_id is not None:
        inst_id = str(inst_id)
        where += f" (id {inst_id})"
    text = inst.get("input")
    if text is None:
        raise DataError(f"{where}: missing 'input'")
    if not isinstance(text, str):
        raise DataError(f"{where}: 'input' must be a string")
    if not text.strip():
        raise DataError(f"{where}: empty 'input' (empty prompt)")
    outputs = inst.get("output")
    if outputs is None:
        raise DataError(f"{where}: missing 'output'")
    if isinstance(outputs, str):
        outputs = [outputs]
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise DataError(f"{where}: 'output' must be a list of strings")
    if not outputs:  # [""] is valid (e.g. task365 on input "uU"); [] is not.
        raise DataError(f"{where}: empty 'output' list")
    return text, list(outputs), inst_id


def load_sni(
    root: str | Path,
    split: str = "train",
    num_pos_examples: int = 2,
    max_instances_per_task: int | None = 100,
    skip_invalid: bool = False,
) -> ExampleList:
    """Load the instances of an SNI split as Tk-Instruct prompts (see
    :func:`render_tk_instruct_prompt`).

    Order is deterministic: tasks in split-file order, instances in file order, at most
    ``max_instances_per_task`` examples per task (``None``: all; instances after the cap are not
    read). ``task`` is the file name, ``category`` comes from ``categories.json`` when it lists
    the task, else from the first entry of the task's ``"Categories"``; ``domain`` is the first
    of ``"Domains"``; ``references`` are all outputs, ``completion`` the first.

    Problems in a task (invalid JSON, missing/empty ``Definition``, missing ``Instances``,
    malformed positive examples, missing task file) always raise :class:`DataError`. A bad
    instance (no input, empty input, empty output list) raises too, naming the file and the
    instance index/id; with ``skip_invalid=True`` it is skipped, the total is logged once and
    available as ``result.num_skipped``.
    """
    root = Path(root)
    if not (root / "tasks").is_dir() or not (root / "splits").is_dir():
        raise DataError(f"{root}: not an SNI directory (needs tasks/ and splits/)")
    names = read_split(root, split)

    categories: dict[str, Any] = {}
    cat_path = root / "categories.json"
    if cat_path.is_file():
        try:
            categories = json.loads(cat_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(f"{cat_path}:{err.lineno}: invalid JSON ({err.msg})") from err
        if not isinstance(categories, dict):
            raise DataError(f"{cat_path}: expected an object task -> category")

    out = ExampleList()
    for name in names:
        path = root / "tasks" / f"{name}.json"
        if not path.is_file():
            raise DataError(f"{path}: task file not found (task {name!r} of split {split!r})")
        task = _load_task_file(path)
        definition = _task_definition(task, path)
        positives = _task_positives(task, path, num_pos_examples)
        instances = task.get("Instances")
        if not isinstance(instances, list):
            raise DataError(f"{path}: missing or invalid 'Instances'")
        category = categories.get(name)
        if not isinstance(category, str):
            category = _first(task.get("Categories"))
        domain = _first(task.get("Domains"))

        kept = 0
        for idx, inst in enumerate(instances):
            if max_instances_per_task is not None and kept >= max_instances_per_task:
                break
            try:
                text, outputs, inst_id = _instance(inst, idx, path)
            except DataError as err:
                if not skip_invalid:
                    raise
                out.skipped.append(str(err))
                continue
            prompt = render_tk_instruct_prompt(definition, positives, text, num_pos_examples)
            out.append(
                Example(
                    prompt=prompt,
                    completion=outputs[0],
                    task=name,
                    category=category,
                    domain=domain,
                    id=inst_id,
                    references=outputs,
                )
            )
            kept += 1
    if out.num_skipped:
        logger.warning(
            "load_sni: skipped %d invalid instance(s) in split %r of %s (first: %s)",
            out.num_skipped,
            split,
            root,
            out.skipped[0],
        )
    return out
