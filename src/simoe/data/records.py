"""Record types shared by every data format: :class:`Example`, :class:`DataError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DataError(ValueError):
    """A data file or record is malformed.

    The message always names where the problem is: ``file:line`` for JSONL, the task file and
    the instance index/id for SNI, the dataset and row index for Hugging Face datasets.
    """


@dataclass
class Example:
    """One instruction-tuning example, independent of the file format it came from.

    ``prompt``/``completion`` hold the plain-text format. ``references`` holds every acceptable
    output (used for evaluation); for training, ``completion`` is the first reference.
    Chat-format records keep their turns in ``messages`` (a list of ``{"role", "content"}``);
    for them ``prompt`` is ``""`` (the chat template renders it at tokenisation time) and
    ``completion``/``references`` hold the content of the last assistant turn.
    """

    prompt: str
    completion: str
    task: str | None = None
    category: str | None = None
    domain: str | None = None
    id: str | None = None
    references: list[str] = field(default_factory=list)
    messages: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        if not self.references and self.messages is None:
            self.references = [self.completion]

    @property
    def is_chat(self) -> bool:
        """True for chat-format (``messages``) records."""
        return self.messages is not None


class ExampleList(list):
    """A ``list[Example]`` that also records what a tolerant load skipped.

    ``num_skipped`` is the number of invalid records/instances dropped with
    ``skip_invalid=True``; ``skipped`` holds their error messages (location included).
    """

    def __init__(self, items: Any = (), skipped: list[str] | None = None) -> None:
        super().__init__(items)
        self.skipped: list[str] = list(skipped or [])

    @property
    def num_skipped(self) -> int:
        """Number of records skipped as invalid."""
        return len(self.skipped)
