"""Generation requests: one prompt (plain text or chat messages) per request, read from the
command line or a JSONL file, and tokenised for routing and generation.

A JSONL request is an object with ``"prompt"`` (a non-empty string) or ``"messages"`` (a list of
``{"role", "content"}``, rendered with the tokenizer's chat template and a generation prompt).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import DataError, EncodedExample, Example, encode_prompt
from ..runtime import model_max_length

DEFAULT_MAX_SOURCE = 1024


@dataclass
class Request:
    """One prompt to answer; ``where`` names it in error messages (``file:line``)."""

    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    where: str = "--prompt"


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, Mapping):
            raise DataError(f"{where}: messages[{i}] must be an object with role and content")
        for key in ("role", "content"):
            if not isinstance(msg.get(key), str):
                raise DataError(f"{where}: messages[{i}].{key} must be a string")
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def request_from_record(record: Any, where: str) -> Request:
    """A request from one decoded JSONL record (DataError naming ``where`` if malformed)."""
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if record.get("messages") is not None:
        return Request(messages=_messages(record["messages"], where), where=where)
    prompt = record.get("prompt")
    if prompt is None:
        raise DataError(f"{where}: missing field 'prompt' (or 'messages')")
    if not isinstance(prompt, str):
        raise DataError(f"{where}: field 'prompt' must be a string")
    if not prompt.strip():
        raise DataError(f"{where}: empty prompt")
    return Request(prompt=prompt, where=where)


def read_requests(path: str | Path) -> list[Request]:
    """Every request of a JSONL file, in order (blank lines skipped). A missing file, a file
    with no request, or a malformed line (named ``file:line``) is one DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not valid UTF-8 ({err.reason})") from None
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: invalid JSON ({err.msg}, column {err.colno})") from None
        out.append(request_from_record(record, where))
    if not out:
        raise DataError(f"{path}: no requests (the file is empty)")
    return out


def prompt_budget(model: Any, max_new_tokens: int, max_source: int = DEFAULT_MAX_SOURCE) -> int:
    """Prompt tokens that leave ``max_new_tokens`` within the model's positions."""
    limit = model_max_length(model)
    if limit is not None:
        max_source = min(max_source, limit - max_new_tokens)
    if max_source < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt: the "
                         f"model reads at most {limit} tokens")
    return max_source


def _require_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat prompts (--chat or 'messages') need a tokenizer with a chat "
                         "template; this run's tokenizer has none")


def encode_request(request: Request, tokenizer: Any, max_source: int, chat: bool = False
                   ) -> EncodedExample:
    """Token ids of the prompt, left-truncated to ``max_source`` (BOS kept), routed on its last
    token. Chat: messages (or the prompt as one user turn) through the chat template."""
    messages = request.messages
    if messages is None and chat:
        messages = [{"role": "user", "content": request.prompt or ""}]
    if messages is None:
        try:
            return encode_prompt(Example(prompt=request.prompt or "", completion=""), tokenizer,
                                 max_source)
        except DataError as err:
            raise DataError(f"{request.where}: {err}") from None
    _require_template(tokenizer)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise DataError(f"{request.where}: the prompt encodes to no tokens")
    keep_bos = tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id
    head = ids[:1] if keep_bos else []
    body = ids[len(head):]
    truncated = len(ids) > max_source
    if truncated:
        body = body[len(body) - (max_source - len(head)):]
    ids = head + body
    return EncodedExample(ids, None, len(ids) - 1, truncated)


def prompt_text(request: Request, tokenizer: Any, chat: bool) -> str:
    """What a request asked, as text: its prompt, or its messages through the chat template."""
    if request.messages is None:
        return request.prompt or ""
    return tokenizer.apply_chat_template(request.messages, tokenize=False,
                                         add_generation_prompt=True)


def encode_requests(requests: Sequence[Request], tokenizer: Any, max_source: int,
                    chat: bool = False) -> list[EncodedExample]:
    """:func:`encode_request` for each request, in order."""
    return [encode_request(r, tokenizer, max_source, chat) for r in requests]
