"""The method interface: everything `train(job)` needs to know about one training method.

    build(prep) -> model        the model to train, made from the prepared base
    trainer(prep, model)        a transformers Trainer over the job's data and schedule
    save(prep, model, trainer)  write the trained model into the run directory; return stats

A method overrides only what differs from a plain causal-LM fine-tune (the defaults here).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn
from transformers import Trainer, TrainingArguments

from ...data import SIMoECollator
from ..job import Prepared, TrainJob, training_arguments
from ..rundir import METRICS_NAME, MetricsLogger


class PlainCollator(SIMoECollator):
    """The SIMoE collator without the routing fields a plain causal LM does not take."""

    def __call__(self, features):  # noqa: ANN001, ANN204
        batch = super().__call__(features)
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}


def plain_rows(prep: Prepared, keep: list[int] | None = None) -> list[dict[str, Any]]:
    """Training rows (token ids, labels, routing position) of all examples or of ``keep``."""
    idx = range(len(prep.encoded)) if keep is None else keep
    return [{"input_ids": prep.encoded[i].input_ids, "labels": prep.encoded[i].labels,
             "routing_index": prep.encoded[i].routing_index} for i in idx]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Method:
    """One training method, registered by ``name`` in :data:`simoe.training.methods.METHODS`."""

    name: ClassVar[str] = ""
    trainer_class: ClassVar[type[Trainer]] = Trainer
    supports_resume: ClassVar[bool] = True
    uses: ClassVar[frozenset[str]] = frozenset({"lr"})
    """The method-specific TrainJob fields this method reads (the others must keep their
    defaults; fields no method lists apply to every method)."""

    def check(self, job: TrainJob) -> None:
        """Refuse a job this method cannot run (before any work)."""
        if job.resume and not self.supports_resume:
            raise ValueError(f"--resume is not supported for {self.name}")

    def needs_task_ids(self, job: TrainJob) -> bool:
        """Whether the data must carry task ids (task-level routing)."""
        return False

    def build(self, prep: Prepared) -> nn.Module:
        """The model to train, made from ``prep.base``."""
        raise NotImplementedError

    def training_args(self, prep: Prepared, **overrides: Any) -> TrainingArguments:
        """The shared schedule (Adam, constant lr, same batches and steps) plus overrides."""
        return training_arguments(prep.job, prep.output, **overrides)

    def train_rows(self, prep: Prepared, model: nn.Module) -> list[dict[str, Any]]:
        return plain_rows(prep)

    def trainer(self, prep: Prepared, model: nn.Module) -> Trainer:
        """A Trainer over the job's data, logging to the run directory's metrics.jsonl."""
        return self.trainer_class(
            model=model, args=self.training_args(prep), train_dataset=self.train_rows(prep, model),
            data_collator=PlainCollator(prep.tokenizer),
            callbacks=[MetricsLogger(prep.output / METRICS_NAME)])

    def trained_modules(self, model: nn.Module) -> list[nn.Module]:
        """The modules whose parameters :meth:`save` writes (gathered whole after an FSDP run)."""
        return list(model.modules())

    def save(self, prep: Prepared, model: nn.Module, trainer: Trainer) -> dict[str, Any]:
        """Write the trained model to ``prep.output``; return what final_stats.json adds."""
        model.save_pretrained(prep.output)
        total = count_parameters(model)
        return {"parameter_counts": {"trainable": total, "total_stored": total,
                                     "active_per_token": total}}
