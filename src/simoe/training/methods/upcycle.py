"""Sparse upcycling: every FFN copied into E experts of a Mixtral model with top-k routing,
trained with the load-balancing loss (1e-2) and the router z-loss (1e-3)."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import Trainer

from ...baselines.moe_losses import ROUTER_Z_LOSS_COEF, router_z_loss
from ..job import Prepared
from .base import Method, count_parameters


class MoETrainer(Trainer):
    """Trainer for the Mixtral baselines: the model's loss (NLL + 1e-2 load balancing, from
    ``output_router_logits``) plus the router z-loss (1e-3), padding masked.

    The loss is a per-micro-batch mean that the Trainer divides by the accumulation steps, so
    every term counts once per optimiser step."""

    def __init__(self, *args: Any, z_loss_weight: float = ROUTER_Z_LOSS_COEF,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.z_loss_weight = z_loss_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        outputs = model(**inputs, output_router_logits=True)
        loss = outputs.loss
        if self.z_loss_weight and outputs.router_logits is not None:
            loss = loss + self.z_loss_weight * router_z_loss(outputs.router_logits,
                                                             inputs.get("attention_mask"))
        return (loss, outputs) if return_outputs else loss


def moe_parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable, stored and active-per-token parameters of a Mixtral model (top-k of E)."""
    cfg = model.config
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    total = count_parameters(model)
    active = total - experts + experts * cfg.num_experts_per_tok // cfg.num_local_experts
    return {"trainable": total, "total_stored": total, "active_per_token": active}


class SparseUpcycling(Method):
    name = "upcycle"
    uses = frozenset({"lr", "moe_experts", "moe_top_k"})
    trainer_class = MoETrainer

    def build(self, prep: Prepared) -> nn.Module:
        from ...baselines.upcycle import upcycle_to_mixtral

        job = prep.job
        return upcycle_to_mixtral(prep.base, num_experts=job.moe_experts, top_k=job.moe_top_k,
                                  seed=job.seed)

    def save(self, prep: Prepared, model: nn.Module, trainer: Trainer) -> dict[str, Any]:
        model.save_pretrained(prep.output)
        return {"parameter_counts": moe_parameter_counts(model)}
