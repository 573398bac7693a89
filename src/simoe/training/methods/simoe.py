"""SIMoE: the frozen base wrapped by :class:`SIMoEModel`, trained by :class:`SIMoETrainer` on
rows that carry cached routing embeddings; saved pruned, with the run's final statistics."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import Trainer

from ...config import SIMoEConfig
from ...data import SIMoECollator
from ...loading import resolve_model_reference
from ...model import SIMoEModel
from ...objective import project_to_target
from ...persistence import live_fraction
from ...runtime import atomic_write_json
from ..distributed import is_main, main_first
from ..job import Prepared, TrainJob, training_arguments
from ..routing_cache import load_or_compute
from ..rundir import METRICS_NAME, MetricsLogger
from ..stats import final_stats
from ..trainer import SIMoETrainer, SIMoETrainingArguments
from .base import Method

# FFN linears of any architecture: Llama-style mlp.*, NeoX/GPT-2 mlp.*, feed_forward.*, ffn.*
FFN_PATTERN = r"\.(mlp|feed_forward|ffn)\."


def simoe_config(job: TrainJob, num_tasks: int = 0) -> SIMoEConfig:
    """The SIMoE config of a job, ablations included (targets='ffn': only FFN linears;
    no sparsity constraint: free real-valued masks)."""
    return SIMoEConfig(
        num_experts=job.experts, target_sparsity=job.sparsity, ortho_weight=job.ortho,
        routing=job.routing, num_tasks=num_tasks,
        base_model_name_or_path=resolve_model_reference(job.model),
        gate_mode=job.gate_mode if job.sparsity_constraint else "free",
        include=[FFN_PATTERN] if job.targets == "ffn" else [],
        target_norms=job.targets != "ffn")


class SIMoE(Method):
    name = "simoe"
    uses = frozenset({"lr", "experts", "sparsity", "ortho", "routing", "gate_mode", "constraint",
                      "sparsity_warmup", "sparsity_hold", "ortho_form", "targets",
                      "sparsity_constraint", "gate_lr", "gate_second_moment", "gate_beta1",
                      "router_lr", "lambda_lr", "balance", "routing_cache", "live_compaction",
                      "compact_margin"})
    trainer_class = SIMoETrainer

    def needs_task_ids(self, job: TrainJob) -> bool:
        return job.routing == "task"

    def build(self, prep: Prepared) -> nn.Module:
        task_ids = prep.task_ids
        self.config = simoe_config(prep.job, len(task_ids) if task_ids else 0)
        if task_ids and is_main():
            atomic_write_json(prep.output / "task_ids.json", task_ids)
        return SIMoEModel.from_base(prep.base, self.config)

    def train_rows(self, prep: Prepared, model: nn.Module) -> list[dict[str, Any]]:
        """Token ids, labels, routing position (and task id); with instance routing the cached
        routing embedding of each prompt, so training never re-runs the routing pass."""
        job = prep.job
        rows: list[dict[str, Any]] = [
            {"input_ids": e.input_ids, "labels": e.labels, "routing_index": e.routing_index,
             **({"task_id": e.task_id} if e.task_id is not None else {})} for e in prep.encoded]
        if job.routing_cache and job.routing == "instance":
            with main_first():  # computed once, by the main process; the others read it
                embeddings = load_or_compute(model, prep.tokenizer, prep.encoded,
                                             prep.output / "routing_cache",
                                             batch_size=max(job.batch_size, 8))
            for row, emb in zip(rows, embeddings, strict=True):
                row["routing_embedding"] = emb
        return rows

    def trainer(self, prep: Prepared, model: nn.Module) -> Trainer:
        job = prep.job
        args = training_arguments(
            job, prep.output, SIMoETrainingArguments, gate_learning_rate=job.gate_lr,
            router_learning_rate=job.router_lr, lambda_learning_rate=job.lambda_lr,
            constraint=job.constraint, sparsity_constraint=job.sparsity_constraint,
            sparsity_warmup=job.sparsity_warmup, sparsity_hold=job.sparsity_hold,
            ortho_form=job.ortho_form, balance_weight=job.balance,
            gate_second_moment=job.gate_second_moment, gate_beta1=job.gate_beta1,
            live_compaction=job.live_compaction, compact_margin=job.compact_margin)
        return SIMoETrainer(model=model, args=args, train_dataset=self.train_rows(prep, model),
                            data_collator=SIMoECollator(prep.tokenizer),
                            processing_class=prep.tokenizer,
                            callbacks=[MetricsLogger(prep.output / METRICS_NAME)])

    def trained_modules(self, model: nn.Module) -> list[nn.Module]:
        """The gated deltas and the router (the frozen base is not saved)."""
        return [gd for _, gd in model.gated_deltas()] + list(model.router.modules())

    def save(self, prep: Prepared, model: nn.Module, trainer: Trainer) -> dict[str, Any]:
        """Close the least committed gates if the union (or each expert) ended below tau, then
        the final statistics (before pruning) and the pruned model. ``projection`` in
        final_stats.json says where the dynamics alone ended and what the closing moved."""
        job = prep.job
        projection = None
        live_before_prune = live_fraction(gd for _, gd in model.gated_deltas())
        if job.sparsity_constraint:  # the constraint holds exactly at the end (see the note)
            gated = [gd for _, gd in model.gated_deltas()]
            projection = project_to_target(gated, self.config.target_sparsity, job.constraint)
        stats = final_stats(model, trainer.lagrangian.value)
        stats["projection"] = projection
        model.prune()
        model.save_pretrained(prep.output)
        counts = model.parameter_counts()
        counts["active_per_token"] = counts["base"] + counts["delta"]
        stats.update({"parameter_counts": counts, "config": self.config.to_dict(),
                      "constraint": job.constraint, "sparsity_warmup": job.sparsity_warmup,
                      "sparsity_hold": job.sparsity_hold,
                      "ortho_form": job.ortho_form,
                      "gate_second_moment": job.gate_second_moment,
                      "gate_beta1": job.gate_beta1,
                      "live_compaction": trainer.args.live_compaction,
                      "compact_margin": (trainer.args.compact_margin
                                         if trainer.args.live_compaction else None),
                      "live_fraction_before_prune": live_before_prune,
                      "ablation": {"targets": job.targets, "ortho": job.ortho,
                                   "sparsity_constraint": job.sparsity_constraint,
                                   "routing": job.routing}})
        return stats
