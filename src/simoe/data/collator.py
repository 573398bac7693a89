"""Batch collation of :class:`~simoe.data.tokenize.EncodedExample` into padded tensors."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from simoe.data.tokenize import IGNORE_INDEX, EncodedExample


def _field(feature: EncodedExample | Mapping[str, Any], name: str) -> Any:
    if isinstance(feature, Mapping):
        return feature.get(name)
    return getattr(feature, name, None)


class SIMoECollator:
    """Pad a list of encoded examples (or dicts with ``input_ids``/``labels``/``routing_index``).

    Returns ``input_ids``, ``attention_mask`` (1 on real tokens), ``labels`` (``-100`` on the
    prompt and on padding; omitted when no example has labels, e.g. generation prompts),
    ``routing_index`` (``LongTensor[B]``, shifted by the pad length with left padding) and
    ``task_ids`` (``LongTensor[B]``) when every example carries an integer ``task_id``, and
    ``routing_embedding`` (stacked) when every example carries a cached one.
    Use ``padding_side="left"`` for generation. The tokenizer must have a pad token (for
    tokenizers without one, set ``tokenizer.pad_token = tokenizer.eos_token``; labels come from
    the examples, never from comparing ids with the pad id, so pad = EOS is safe).
    """

    def __init__(
        self,
        tokenizer: Any,
        padding_side: str = "right",
        pad_to_multiple_of: int | None = None,
    ) -> None:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError("pad_to_multiple_of must be >= 1")
        self.tokenizer = tokenizer
        self.padding_side = padding_side
        self.pad_to_multiple_of = pad_to_multiple_of

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            raise ValueError(
                "the tokenizer has no pad token; set one first, e.g. "
                "tokenizer.pad_token = tokenizer.eos_token"
            )
        return int(pad)

    def __call__(
        self, features: Sequence[EncodedExample | Mapping[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """Collate ``features`` into a dict of tensors (see the class docstring)."""
        if not features:
            raise ValueError("cannot collate an empty batch")
        pad_id = self._pad_id()
        ids = [list(_field(f, "input_ids")) for f in features]
        labels = [_field(f, "labels") for f in features]
        has_labels = [lab is not None for lab in labels]
        if any(has_labels) and not all(has_labels):
            raise ValueError("either all examples of a batch have labels or none has")
        task = [_field(f, "task_id") for f in features]

        routing = []
        indices = [_field(f, "routing_index") for f in features]
        for i, (seq, lab, ri) in enumerate(zip(ids, labels, indices, strict=True)):
            if not seq:
                raise ValueError(f"example {i} of the batch has no tokens")
            if lab is not None and len(lab) != len(seq):
                raise ValueError(f"example {i}: labels and input_ids differ in length")
            if ri is None:  # derive: token before the first label, or the last token
                first = next((j for j, t in enumerate(lab or []) if t != IGNORE_INDEX), len(seq))
                ri = first - 1
            if not 0 <= int(ri) < len(seq):
                raise ValueError(f"example {i}: routing_index {ri} out of range")
            routing.append(int(ri))

        length = max(len(s) for s in ids)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            length = (length + m - 1) // m * m

        batch_ids = torch.full((len(ids), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        batch_labels = torch.full((len(ids), length), IGNORE_INDEX, dtype=torch.long)
        for i, seq in enumerate(ids):
            n = len(seq)
            start = length - n if self.padding_side == "left" else 0
            batch_ids[i, start : start + n] = torch.tensor(seq, dtype=torch.long)
            mask[i, start : start + n] = 1
            if labels[i] is not None:
                batch_labels[i, start : start + n] = torch.tensor(labels[i], dtype=torch.long)
            routing[i] += start

        out = {"input_ids": batch_ids, "attention_mask": mask}
        if all(has_labels):
            out["labels"] = batch_labels
        out["routing_index"] = torch.tensor(routing, dtype=torch.long)
        embeddings = [_field(f, "routing_embedding") for f in features]
        if all(e is not None for e in embeddings):  # cached routing embeddings (training)
            out["routing_embedding"] = torch.stack([torch.as_tensor(e) for e in embeddings])
        if all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in task):
            out["task_ids"] = torch.tensor([int(t) for t in task], dtype=torch.long)
        elif any(t is not None for t in task):
            raise ValueError("either all examples of a batch have an integer task_id or none has")
        return out
