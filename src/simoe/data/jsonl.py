"""JSONL records: ``prompt``/``completion`` pairs and chat ``messages`` (Tülu-v3 SFT format).

One JSON object per line (blank lines are ignored). Two record shapes are accepted:

* ``{"prompt": str, "completion": str | list[str], "task"?, "category"?, "domain"?, "id"?}``;
  a list ``completion`` gives every acceptable reference, the first one is trained on.
* ``{"messages": [{"role": str, "content": str}, ...], "id"?, ...}`` (Tülu-v3 SFT mixture);
  a ``source`` field (as in Tülu) is used as ``domain`` when no ``domain`` is given.

A ``.json`` file whose content is a JSON array holds the same records as array elements.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from simoe.data.records import DataError, Example, ExampleList

logger = logging.getLogger(__name__)

_META_FIELDS = ("task", "category", "domain", "id")


def _meta(record: Mapping[str, Any], key: str, where: str) -> str | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return str(value)


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise DataError(f"{where}: field 'messages' must be a list, got {type(value).__name__}")
    if not value:
        raise DataError(f"{where}: empty 'messages' list")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, Mapping):
            raise DataError(f"{where}: messages[{i}] is not an object")
        for key in ("role", "content"):
            if key not in msg or msg[key] is None:
                raise DataError(f"{where}: messages[{i}] is missing field {key!r}")
            if not isinstance(msg[key], str):
                raise DataError(f"{where}: messages[{i}].{key} must be a string")
        out.append(dict(msg))
    if not any(m["role"] == "assistant" for m in out):
        raise DataError(f"{where}: 'messages' has no assistant turn (nothing to train on)")
    return out


def example_from_record(record: Any, where: str) -> Example:
    """Convert one decoded record (a mapping) to an :class:`Example`.

    ``where`` is the location used in error messages (e.g. ``"data.jsonl:12"``).
    Raises :class:`DataError` on a missing field, an empty prompt, an empty completion list
    or an empty/invalid ``messages`` list.
    """
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    meta = {key: _meta(record, key, where) for key in _META_FIELDS}
    if meta["domain"] is None and isinstance(record.get("source"), str):
        meta["domain"] = record["source"]

    if record.get("messages") is not None:
        messages = _messages(record["messages"], where)
        last = [m["content"] for m in messages if m["role"] == "assistant"][-1]
        return Example(prompt="", completion=last, references=[last], messages=messages, **meta)

    if record.get("prompt") is None:
        raise DataError(f"{where}: missing field 'prompt' (or 'messages')")
    prompt = record["prompt"]
    if not isinstance(prompt, str):
        raise DataError(f"{where}: field 'prompt' must be a string")
    if not prompt.strip():
        raise DataError(f"{where}: empty prompt")
    if record.get("completion") is None:
        raise DataError(f"{where}: missing field 'completion'")
    completion = record["completion"]
    if isinstance(completion, str):
        references = [completion]
    elif isinstance(completion, list):
        if not completion:
            raise DataError(f"{where}: empty 'completion' list")
        if not all(isinstance(c, str) for c in completion):
            raise DataError(f"{where}: 'completion' list must contain only strings")
        references = list(completion)
    else:
        raise DataError(f"{where}: field 'completion' must be a string or a list of strings")
    return Example(prompt=prompt, completion=references[0], references=references, **meta)


def examples_from_records(
    records: Iterable[tuple[str, Any]], source: str, *, skip_invalid: bool = False
) -> ExampleList:
    """Convert ``(location, record)`` pairs to examples.

    A record may be a :class:`DataError` instance (e.g. a line that is not valid JSON); it is
    raised, or skipped with ``skip_invalid=True``. Skips are logged once, with their count.
    """
    out = ExampleList()
    for where, record in records:
        try:
            if isinstance(record, DataError):
                raise record
            out.append(example_from_record(record, where))
        except DataError as err:
            if not skip_invalid:
                raise
            out.skipped.append(str(err))
    if out.num_skipped:
        logger.warning(
            "skipped %d invalid record(s) in %s (first: %s)",
            out.num_skipped,
            source,
            out.skipped[0],
        )
    if not out:
        raise DataError(f"{source}: no valid records")
    return out


def _iter_jsonl(path: Path, text: str) -> Iterable[tuple[str, Any]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as err:
            yield where, DataError(f"{where}: invalid JSON ({err.msg}, column {err.colno})")


def load_jsonl(path: str | Path, *, skip_invalid: bool = False) -> ExampleList:
    """Load a JSONL (or JSON-array ``.json``) file of prompt/completion or messages records.

    Invalid JSON lines, missing fields, empty prompts, empty completion lists and empty
    ``messages`` raise :class:`DataError` naming ``file:line``; with ``skip_invalid=True`` they
    are skipped instead and their number is logged once (``result.num_skipped``).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err})") from err

    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            array = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno})"
            ) from err
        pairs: Iterable[tuple[str, Any]] = (
            (f"{path}: record {i}", rec) for i, rec in enumerate(array)
        )
    else:
        pairs = _iter_jsonl(path, text)
    return examples_from_records(pairs, str(path), skip_invalid=skip_invalid)
