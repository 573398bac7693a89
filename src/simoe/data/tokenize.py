"""Tokenisation of :class:`~simoe.data.records.Example` for causal-LM training and generation.

Layout of a prompt/completion example (``max_source_len`` = S, ``max_target_len`` = T)::

    input_ids  = [BOS] prompt_tokens            completion_tokens EOS
    labels     = -100  -100 ... -100            completion_tokens EOS
    routing_index = index of the last prompt token (the token before the first label)

Truncation policy (the same for training and for :func:`encode_prompt`):

* Prompt longer than S tokens (special prefix tokens such as BOS included): the leading special
  tokens the tokenizer adds (BOS) are kept and tokens are dropped from the LEFT of the rest, so
  that the end of the prompt survives: for SNI that is the instance input and the ``Output:``
  cue, i.e. exactly the tokens the router reads. The definition / positive examples are what
  gets cut. Such examples are flagged ``truncated=True`` and counted.
* Completion longer than T - 1 tokens: cut on the right so that completion + EOS is T tokens
  (EOS is always kept, it counts against T); flagged ``target_truncated=True``.

The prompt and the completion are joined as text with :func:`completion_separator` (a single
space unless the boundary already has whitespace or the completion is empty). The completion
tokens are the tokens that follow the prompt in the tokenisation of the joined text, so the
training sequence is what the tokenizer produces for the whole text (falling back to tokenising
the completion alone if the prompt tokens are not a prefix of the joined tokens).

Chat (``messages``) examples are rendered with ``tokenizer.apply_chat_template`` and tokenised
without adding special tokens (the template supplies them, as in transformers). Only assistant
turns are supervised: each assistant span runs from the end of the rendering of the preceding
turns with ``add_generation_prompt=True`` to the end of the rendering that includes the turn
(so the template's end-of-turn marker after the content is supervised as well). Spans are found
by rendering the prefixes incrementally; no ``{% generation %}`` support is needed. The text
before the first assistant token is the prompt: it is bounded by S with the policy above (BOS
kept if it is the first token), and the whole sequence is then capped at S + T tokens by cutting
on the right. ``routing_index`` is the token before the first assistant token.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from simoe.data.records import DataError, Example

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class EncodedExample:
    """A tokenised example.

    ``labels`` is ``None`` for generation prompts (:func:`encode_prompt`). ``truncated`` means
    the prompt was left-truncated, ``target_truncated`` that the completion (or, for chat, the
    conversation) was cut on the right. ``task_id`` is an optional integer task index (for
    task-level routing and per-task statistics).
    """

    input_ids: list[int]
    labels: list[int] | None
    routing_index: int
    truncated: bool = False
    target_truncated: bool = False
    task_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (e.g. for ``datasets.Dataset.from_list``)."""
        return asdict(self)


class EncodedExamples(list):
    """A ``list[EncodedExample]`` that also carries the truncation counts of the batch."""

    def __init__(
        self,
        items: Iterable[EncodedExample] = (),
        num_truncated: int = 0,
        num_target_truncated: int = 0,
    ) -> None:
        super().__init__(items)
        self.num_truncated = num_truncated
        self.num_target_truncated = num_target_truncated


def completion_separator(prompt: str, completion: str) -> str:
    """The separator put between prompt and completion: ``" "`` unless the completion is empty
    or the prompt already ends / the completion already starts with whitespace (then ``""``)."""
    if not completion or (prompt and prompt[-1].isspace()) or completion[0].isspace():
        return ""
    return " "


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _prompt_ids(tokenizer: Any, prompt: str) -> tuple[list[int], list[int]]:
    """(leading special tokens, prompt tokens) as the tokenizer encodes ``prompt``."""
    body = _ids(tokenizer, prompt, special=False)
    with_special = _ids(tokenizer, prompt, special=True)
    n = len(body)
    for k in range(len(with_special) - n + 1):
        if with_special[k : k + n] == body:
            return with_special[:k], body  # special tokens appended after the body are dropped
    return [], with_special


def _left_truncate(
    prefix: list[int], body: list[int], max_source_len: int
) -> tuple[list[int], bool]:
    if len(prefix) + len(body) <= max_source_len:
        return prefix + body, False
    keep = max_source_len - len(prefix)
    if keep < 1:
        raise ValueError(f"max_source_len={max_source_len} leaves no room for the prompt")
    return prefix + body[len(body) - keep :], True


def _check_lengths(max_source_len: int, max_target_len: int) -> None:
    if max_source_len < 1 or max_target_len < 1:
        raise ValueError("max_source_len and max_target_len must be >= 1")


def _eos_id(tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; set tokenizer.eos_token first")
    return int(eos)


def _where(example: Example) -> str:
    parts = []
    if example.task:
        parts.append(f"task {example.task}")
    if example.id:
        parts.append(f"id {example.id}")
    label = ", ".join(parts)
    return f"example ({label})" if label else "example"


def _render_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]], gen: bool) -> str:
    if not messages:
        return ""
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=gen)
    if not isinstance(text, str):
        raise TypeError("apply_chat_template(tokenize=False) did not return a string")
    return text


def _require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "messages (chat-format) records need a tokenizer with a chat template; this "
            "tokenizer has none: set tokenizer.chat_template to a Jinja template"
        )


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _encode_chat(
    example: Example, tokenizer: Any, max_source_len: int, max_target_len: int
) -> EncodedExample:
    _require_chat_template(tokenizer)
    messages = example.messages or []
    full = _render_chat(tokenizer, messages, gen=False)
    char_spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        before = _render_chat(tokenizer, messages[:i], gen=True)
        upto = _render_chat(tokenizer, messages[: i + 1], gen=False)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise DataError(
                f"{_where(example)}: the chat template does not render conversation prefixes "
                f"as prefixes of the full conversation (turn {i}); assistant spans cannot be "
                "located"
            )
        char_spans.append((len(before), len(upto)))
    if not char_spans:
        raise DataError(f"{_where(example)}: 'messages' has no assistant turn")

    ids = _ids(tokenizer, full, special=False)
    cache: dict[int, int] = {}

    def boundary(pos: int) -> int:
        # Tokens of full[:pos] shared with the full tokenisation; a token merged across the
        # boundary falls on the right-hand side.
        if pos not in cache:
            cache[pos] = _common_prefix(_ids(tokenizer, full[:pos], special=False), ids)
        return cache[pos]

    labels = [IGNORE_INDEX] * len(ids)
    token_spans = [(boundary(s), boundary(e)) for s, e in char_spans]
    for start, end in token_spans:
        labels[start:end] = ids[start:end]
    first = token_spans[0][0]
    if first < 1:
        raise DataError(f"{_where(example)}: no prompt tokens before the first assistant turn")

    truncated = False
    if first > max_source_len:
        bos = tokenizer.bos_token_id
        keep_first = 1 if bos is not None and ids[0] == bos else 0
        drop = first - max_source_len
        if max_source_len - keep_first < 1:
            raise ValueError(f"max_source_len={max_source_len} leaves no room for the prompt")
        ids = ids[:keep_first] + ids[keep_first + drop :]
        labels = labels[:keep_first] + labels[keep_first + drop :]
        first = max_source_len
        truncated = True
    cap = max_source_len + max_target_len
    target_truncated = len(ids) > cap
    ids, labels = ids[:cap], labels[:cap]
    return EncodedExample(ids, labels, first - 1, truncated, target_truncated)


def encode_example(
    example: Example,
    tokenizer: Any,
    max_source_len: int = 1024,
    max_target_len: int = 128,
    task_id: int | None = None,
) -> EncodedExample:
    """Tokenise one training example (labels ``-100`` on the prompt; see the module docstring
    for the layout and the truncation policy)."""
    _check_lengths(max_source_len, max_target_len)
    if example.messages is not None:
        enc = _encode_chat(example, tokenizer, max_source_len, max_target_len)
        enc.task_id = task_id
        return enc
    eos = _eos_id(tokenizer)
    prefix, body = _prompt_ids(tokenizer, example.prompt)
    if not body:
        raise DataError(f"{_where(example)}: the prompt encodes to no tokens")
    sep = completion_separator(example.prompt, example.completion)
    joined = _ids(tokenizer, example.prompt + sep + example.completion, special=False)
    if joined[: len(body)] == body:
        completion = joined[len(body) :]
    else:
        completion = _ids(tokenizer, sep + example.completion, special=False)
    target_truncated = len(completion) + 1 > max_target_len
    completion = completion[: max_target_len - 1] + [eos]
    prompt, truncated = _left_truncate(prefix, body, max_source_len)
    return EncodedExample(
        input_ids=prompt + completion,
        labels=[IGNORE_INDEX] * len(prompt) + completion,
        routing_index=len(prompt) - 1,
        truncated=truncated,
        target_truncated=target_truncated,
        task_id=task_id,
    )


def encode_prompt(
    example: Example, tokenizer: Any, max_source_len: int = 1024, task_id: int | None = None
) -> EncodedExample:
    """Tokenise the prompt of an example for generation (``labels=None``, routing index = last
    token). Same left-truncation policy as :func:`encode_example`. A chat example is rendered up
    to (without) its last assistant turn, or whole if it has none, with
    ``add_generation_prompt=True``."""
    _check_lengths(max_source_len, 1)
    if example.messages is not None:
        _require_chat_template(tokenizer)
        turns = example.messages
        last = max((i for i, m in enumerate(turns) if m["role"] == "assistant"), default=len(turns))
        text = _render_chat(tokenizer, example.messages[:last], gen=True)
        ids = _ids(tokenizer, text, special=False)
        bos = tokenizer.bos_token_id
        prefix = ids[:1] if ids and bos is not None and ids[0] == bos else []
        prompt, truncated = _left_truncate(prefix, ids[len(prefix) :], max_source_len)
    else:
        prefix, body = _prompt_ids(tokenizer, example.prompt)
        prompt, truncated = _left_truncate(prefix, body, max_source_len)
    if not prompt:
        raise DataError(f"{_where(example)}: the prompt encodes to no tokens")
    return EncodedExample(prompt, None, len(prompt) - 1, truncated, False, task_id)


def build_task_ids(examples: Iterable[Example]) -> dict[str, int]:
    """Map every task name in ``examples`` to an integer id (sorted names, ids from 0)."""
    return {name: i for i, name in enumerate(sorted({e.task for e in examples if e.task}))}


def _task_id(example: Example, task_ids: Mapping[str, int] | None) -> int | None:
    if task_ids is None:
        return None
    if example.task not in task_ids:
        raise ValueError(f"{_where(example)}: task {example.task!r} is not in task_ids")
    return int(task_ids[example.task])


def encode_examples(
    examples: Iterable[Example],
    tokenizer: Any,
    max_source_len: int = 1024,
    max_target_len: int = 128,
    *,
    task_ids: Mapping[str, int] | None = None,
) -> EncodedExamples:
    """Tokenise many training examples with :func:`encode_example`.

    The number of left-truncated prompts (and of cut completions) is logged once, as a single
    warning, and exposed as ``result.num_truncated`` / ``result.num_target_truncated``.
    ``task_ids`` (task name -> int, see :func:`build_task_ids`) fills ``task_id``.
    """
    out = EncodedExamples(
        encode_example(e, tokenizer, max_source_len, max_target_len, _task_id(e, task_ids))
        for e in examples
    )
    out.num_truncated = sum(e.truncated for e in out)
    out.num_target_truncated = sum(e.target_truncated for e in out)
    if out.num_truncated or out.num_target_truncated:
        logger.warning(
            "encode_examples: %d of %d prompts left-truncated to max_source_len=%d (leading "
            "BOS and prompt end kept); %d completions cut to max_target_len=%d",
            out.num_truncated,
            len(out),
            max_source_len,
            out.num_target_truncated,
            max_target_len,
        )
    return out


def encode_prompts(
    examples: Iterable[Example],
    tokenizer: Any,
    max_source_len: int = 1024,
    *,
    task_ids: Mapping[str, int] | None = None,
) -> EncodedExamples:
    """Tokenise many generation prompts with :func:`encode_prompt`; the number of
    left-truncated prompts is logged once and exposed as ``result.num_truncated``."""
    out = EncodedExamples(
        encode_prompt(e, tokenizer, max_source_len, _task_id(e, task_ids)) for e in examples
    )
    out.num_truncated = sum(e.truncated for e in out)
    if out.num_truncated:
        logger.warning(
            "encode_prompts: %d of %d prompts left-truncated to max_source_len=%d (leading "
            "BOS and prompt end kept)",
            out.num_truncated,
            len(out),
            max_source_len,
        )
    return out
