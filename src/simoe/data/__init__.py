"""Data layer: SNI / JSONL / Hugging Face loading, tokenisation with truncation, collation."""

from simoe.data.collator import SIMoECollator
from simoe.data.jsonl import example_from_record, load_jsonl
from simoe.data.loading import is_saved_dataset, is_sni_dir, load_examples
from simoe.data.records import DataError, Example, ExampleList
from simoe.data.sni import available_splits, load_sni, read_split, render_tk_instruct_prompt
from simoe.data.tokenize import (
    IGNORE_INDEX,
    EncodedExample,
    EncodedExamples,
    build_task_ids,
    completion_separator,
    encode_example,
    encode_examples,
    encode_prompt,
    encode_prompts,
)

__all__ = [
    "IGNORE_INDEX",
    "DataError",
    "EncodedExample",
    "EncodedExamples",
    "Example",
    "ExampleList",
    "SIMoECollator",
    "available_splits",
    "build_task_ids",
    "completion_separator",
    "encode_example",
    "encode_examples",
    "encode_prompt",
    "encode_prompts",
    "example_from_record",
    "is_saved_dataset",
    "is_sni_dir",
    "load_examples",
    "load_jsonl",
    "load_sni",
    "read_split",
    "render_tk_instruct_prompt",
]
