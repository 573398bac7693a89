"""Embedded demo assets: a synthetic SNI-format instruction benchmark and a small pre-trained
Llama base model trained on instruction-free text from the same generator."""

from simoe.synthetic.pretrain import (
    STATS_NAME,
    complete,
    pretrain_base,
    pretrain_key,
    read_stats,
    train_tokenizer,
)
from simoe.synthetic.tasks import (
    GENERATOR_VERSION,
    SEEN_SPLIT,
    TASKS,
    TEST_SPLIT,
    TRAIN_SPLIT,
    TaskSpec,
    categories,
    generic_text,
    instruction_texts,
    task_names,
    write_benchmark,
)

__all__ = [
    "GENERATOR_VERSION",
    "SEEN_SPLIT",
    "STATS_NAME",
    "TASKS",
    "TEST_SPLIT",
    "TRAIN_SPLIT",
    "TaskSpec",
    "categories",
    "complete",
    "generic_text",
    "instruction_texts",
    "pretrain_base",
    "pretrain_key",
    "read_stats",
    "task_names",
    "train_tokenizer",
    "write_benchmark",
]
