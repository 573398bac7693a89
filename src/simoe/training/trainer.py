"""SIMoETrainer: transformers' Trainer with the SIMoE objective, lambda dual ascent, per-group
learning rates, SIMoE-only checkpoints and the method's vital signs in the logs."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback, TrainingArguments

from ..constraint import Lagrangian, ramp
from ..model import WEIGHTS_NAME, SIMoEModel
from ..objective import (
    CONSTRAINTS,
    ORTHO_FORMS,
    clamp_log_alpha_,
    expected_sparsity,
    expected_sparsity_per_expert,
    load_imbalance,
    measured_constraint,
    measured_sparsity,
    num_gates,
    orthogonality,
    routing_entropy,
)
from ..persistence import live_fraction
from .compaction import DEFAULT_MARGIN, compact
from .distributed import full_gates, wait_for_everyone
from .optimizer import SECOND_MOMENTS, SIMoEAdamW

TRAINER_STATE_NAME = "simoe_trainer_state.json"
logger = logging.getLogger(__name__)


@dataclass
class SIMoETrainingArguments(TrainingArguments):
    """TrainingArguments plus the SIMoE knobs. ``learning_rate`` is the deltas' rate.

    Gate and router rates: the paper gives only the deltas' (2e-5). Under Adam a gate logit
    moves about ``gate_learning_rate`` per step while the sparsity term pushes it, and it must
    travel about 2.95 (from the init 1.35 to -1.6, where the median gate reaches 0), so 1e-2
    reaches the target within a few hundred steps -- an ordinary SNI run has thousands.
    Router: 1e-4. Adam turns the router's tiny early gradients into full-size steps; at 1e-3 the
    routing collapsed onto one expert within 40 steps on sni-mini/stories260K, at 1e-4 it stays
    spread far longer. lambda's dual step: 0.05 rather than the paper's implicit 1. With 1, lambda
    grows so fast that every gate crosses zero in the same few steps and tau = 0.5 ended at 0.96;
    with 0.05 it ended at 0.57 (same 80-step run).
    """

    gate_learning_rate: float = field(default=0.1, metadata={"help": "Adam lr of the gates"})
    gate_second_moment: str = field(default="row", metadata={
        "help": "'row': the gates' Adam second moment is shared by each expert's row in a "
                "layer, so a gate moves in proportion to its net force; 'element': plain Adam "
                "(every pushed gate moves ~lr per step: gates close in lockstep)"})
    router_learning_rate: float = field(default=1e-4, metadata={"help": "Adam lr of the router"})
    lambda_learning_rate: float = field(default=0.02, metadata={"help": "dual step on lambda"})
    constraint: str = field(default="union", metadata={
        "help": "which sparsity tau bounds: 'union' (gated off for every expert = pruned), "
                "'mean' over experts, or 'per-expert' (one multiplier per expert)"})
    sparsity_constraint: bool = field(default=True, metadata={"help": "enforce sparsity >= tau"})
    sparsity_warmup: float = field(default=0.75, metadata={
        "help": "fraction of the steps by which the target has ramped linearly up to tau"})
    sparsity_hold: float = field(default=0.25, metadata={
        "help": "fraction of the steps with no sparsity or orthogonality pressure (the deltas "
                "learn first); the ramp starts here"})
    ortho_form: str = field(default="offdiag", metadata={
        "help": "'offdiag' (overlap between different experts, size-normalised) or 'literal' "
                "(||ZZ^T - I||_F as printed)"})
    sparsity_band: float | None = field(default=0.02, metadata={
        "help": "above tau(t) + band the multiplier turns negative and overshot gates reopen "
                "(None: one-sided, the paper's reset-at-zero rule only)"})
    balance_weight: float = field(default=0.1, metadata={
        "help": "weight of log M - H(mean alpha over the batch): keeps every expert in use "
                "without making any one prompt's routing less sharp"})
    gate_beta1: float = field(default=0.0, metadata={
        "help": "Adam's first-moment decay for the gates (0: no momentum, a gate stops as soon "
                "as lambda is reset)"})
    live_compaction: bool = field(default=True, metadata={
        "help": "remove columns every expert has closed (logit <= threshold - compact_margin) "
                "from the deltas, gates and optimiser state during training"})
    compact_margin: float = field(default=DEFAULT_MARGIN, metadata={
        "help": "how far below the closing threshold every expert's logit must be"})
    routing_weighted_penalty: bool = field(default=True, metadata={
        "help": "weight each expert's sparsity pressure by its mean routing weight (SMAT)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {self.constraint!r}")
        if self.ortho_form not in ORTHO_FORMS:
            raise ValueError(f"ortho_form must be one of {ORTHO_FORMS}, got {self.ortho_form!r}")
        if self.gate_second_moment not in SECOND_MOMENTS:
            raise ValueError(f"gate_second_moment must be one of {SECOND_MOMENTS}, "
                             f"got {self.gate_second_moment!r}")
        ramp(0, 1, self.sparsity_warmup, self.sparsity_hold)  # validates both fractions


class _DualAscent(TrainerCallback):
    """After every optimiser step: keep the gate logits in [LOG_ALPHA_MIN, LOG_ALPHA_MAX] and
    take the dual step lambda_i <- max(0, lambda_i + eta (tau(t) - measured_i)) (reset to 0 when
    the constraint holds), tau(t) the warmed-up target of the next step."""

    def __init__(self, trainer: SIMoETrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        t = self.trainer
        if t._simoe().simoe_config.gate_mode != "free":
            clamp_log_alpha_(t.gated())
        if t.args.sparsity_constraint:
            with torch.no_grad():
                measured = measured_constraint(t.full_gated(), t.args.constraint)
            t.lagrangian.update(measured, t.target(state.global_step))
            if t.args.live_compaction:
                t.compacted += compact(t.gated(), t.optimizer, t.args.compact_margin)
        return control


class SIMoETrainer(Trainer):
    """Trains a :class:`SIMoEModel` with L = NLL + beta L_ortho + lambda (tau - E[sparsity])."""

    def __init__(self, model: SIMoEModel, args: SIMoETrainingArguments, **kwargs: Any) -> None:
        if not isinstance(model, SIMoEModel):
            raise TypeError("SIMoETrainer trains a SIMoEModel")
        if not isinstance(args, SIMoETrainingArguments):
            raise TypeError("SIMoETrainer needs SIMoETrainingArguments")
        free = model.simoe_config.gate_mode == "free"
        if free and args.sparsity_constraint:
            raise ValueError("gate_mode='free' masks are real values without sparsity: train them "
                             "with sparsity_constraint=False (ablation c)")
        super().__init__(model=model, args=args, **kwargs)
        if self.is_fsdp_enabled and self.accelerator.state.fsdp_plugin.fsdp_version != 2:
            raise ValueError("SIMoE trains under FSDP2 only (accelerate launch --use_fsdp "
                             "--fsdp_version 2): FSDP1's flat parameters hide the gates")
        tau, m = model.simoe_config.target_sparsity, model.simoe_config.num_experts
        band = args.sparsity_band
        self.lagrangian = Lagrangian.per_expert(tau, args.lambda_learning_rate, m, band) \
            if args.constraint == "per-expert" \
            else Lagrangian(tau, args.lambda_learning_rate, band=band)
        if args.live_compaction and args.world_size > 1:
            # DDP's reducer holds the Parameters it was built with; compaction replaces them.
            logger.warning("live compaction is off with %d processes (DDP keeps the original "
                           "parameters); dead columns are removed when the run is pruned at "
                           "the end", args.world_size)
            args.live_compaction = False
        self.add_callback(_DualAscent(self))
        self._acc: dict[str, Any] = {}
        self._last_ortho = 0.0
        self.compacted = 0  # parameters removed by live compaction in this process

    def gated(self) -> list:
        """The GatedDelta modules (under FSDP2 their parameters are this process's shards)."""
        return [gd for _, gd in self._simoe().gated_deltas()]

    def full_gated(self) -> list:
        """The gates whole on every process (gathered under FSDP2; collective)."""
        return full_gates(self.gated())

    def _simoe(self) -> SIMoEModel:
        return self.accelerator.unwrap_model(self.model)

    # ---------------------------------------------------------------- optimiser
    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            a = self.args
            groups = self._simoe().parameter_groups(a.learning_rate, a.gate_learning_rate,
                                                    a.router_learning_rate, a.weight_decay)
            for g in groups:
                g["second_moment"] = a.gate_second_moment if g["name"] == "gates" else "element"
                if g["name"] == "gates":
                    g["betas"] = (a.gate_beta1, a.adam_beta2)
            self.optimizer = SIMoEAdamW(groups, betas=(a.adam_beta1, a.adam_beta2),
                                        eps=a.adam_epsilon)
        return self.optimizer

    # ---------------------------------------------------------------- objective
    def pressure(self, step: int) -> float:
        """r(t) in [0, 1]: 0 during the hold, then a linear ramp to 1 at the warm-up's end."""
        return ramp(step, max(self.state.max_steps, 1), self.args.sparsity_warmup,
                    self.args.sparsity_hold)

    def target(self, step: int) -> float:
        """tau(t) = tau r(t)."""
        return self._simoe().simoe_config.target_sparsity * self.pressure(step)

    def regularizer(self, alpha: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """beta N L_ortho + N mean_i w_i lambda_i (tau(t) - E[s_i]), with the orthogonality and
        the expected union sparsity detached for the log. compute_loss scales it so that it
        counts once per optimiser step.

        N (gate positions per expert) makes lambda and beta price one average gate, so their
        scale does not change with the model's size. The primal force acts on every expert's
        expected L0 E[s_i] whatever the constraint: the union's own surrogate
        1 - prod_i (1 - P(z_i != 0)) has no usable gradient while the experts overlap (~1e-9 at
        init), and lowering any expert's density lowers the union's. w_i = M * mean routing
        weight of expert i in the batch (routing-weighted) or 1: under Adam only the ratio of
        the forces on a gate matters, and the NLL's force on expert i's gates scales with
        alpha_i, so weighting the pressure the same way keeps rarely routed experts from being
        closed first (the rich-get-richer collapse of wave 1). The off-diagonal orthogonality
        weights the pair (i, j) by w_i w_j for the same reason.
        """
        model, gated = self._simoe(), self.full_gated()
        cfg, args = model.simoe_config, self.args
        device, m = gated[0].log_alpha.device, cfg.num_experts
        weights = mean_alpha = None
        if alpha is not None:
            mean_alpha = self.global_mean_alpha(alpha.reshape(-1, m).float()).to(device)
        if args.routing_weighted_penalty and mean_alpha is not None:
            weights = mean_alpha.detach() * m
        offdiag = args.ortho_form == "offdiag"
        ortho = orthogonality(gated, model.training, args.ortho_form,
                              weights if offdiag else None) if cfg.ortho_weight > 0 \
            else torch.zeros((), device=device)
        beta = cfg.ortho_weight * self.pressure(self.state.global_step)
        reg = beta * (float(num_gates(gated)) if offdiag else 1.0) * ortho
        if args.balance_weight > 0 and mean_alpha is not None:
            balance = load_imbalance(mean_alpha[None])
            # Value: the global batch's imbalance. Gradient: each process reaches only its own
            # rows and DDP averages over the processes, so R times the local part sums to the
            # one-process gradient.
            r = self.accelerator.num_processes
            balance = balance if r == 1 else balance.detach() + r * (balance - balance.detach())
            reg = reg + args.balance_weight * balance
        if cfg.gate_mode == "free":  # real-valued masks: no expected L0
            return reg, ortho.detach(), torch.full((), math.nan, device=device)
        per_expert = expected_sparsity_per_expert(gated)
        if args.sparsity_constraint and any(v != 0 for v in self.lagrangian.multipliers):
            weights = torch.ones(m, device=device) if weights is None else weights
            lam = torch.tensor(self.lagrangian.multipliers, device=device)
            tau = torch.tensor(self.lagrangian.current_target or 0.0, device=device)
            reg = reg + float(num_gates(gated)) * (weights * lam * (tau - per_expert)).mean()
        with torch.no_grad():
            union = expected_sparsity(gated, "union")
        return reg, ortho.detach(), union

    def global_mean_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        """Mean routing weights ([M]) over the global batch: every process's rows (all-reduced,
        detached) with this process's own rows attached, so the weights of the regulariser,
        hence the regulariser itself, are the same on every process."""
        if self.accelerator.num_processes == 1:
            return alpha.mean(0)
        local = alpha.sum(0)
        both = torch.cat([local.detach(), local.new_tensor([alpha.shape[0]])])
        total = self.accelerator.reduce(both, reduction="sum")
        return (total[:-1] - local.detach() + local) / total[-1]

    def _loss_is_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        """The Trainer's own rule: is the loss already normalised over the accumulated batch?"""
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                    or self.compute_loss_func is not None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
        # The NLL exactly as transformers computes it (token normalisation across accumulation
        # steps and devices included); the SIMoE terms are added on top.
        nll, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                            num_items_in_batch=num_items_in_batch)
        if not model.training:
            return (nll, outputs) if return_outputs else nll
        reg, ortho, expected = self.regularizer(outputs.alpha)
        # Every micro-batch adds the regulariser; it must count once per optimiser step. When
        # the Trainer does not divide the loss by the accumulation steps, divide it here. Under
        # DDP the regulariser is the same on every process (its routing weights are the global
        # batch's), so the gradient average keeps it whole.
        ga = self.current_gradient_accumulation_steps
        scaled = self._loss_is_scaled_for_ga(num_items_in_batch)
        loss = nll + (reg / ga if scaled else reg)
        # For the log: this micro-batch's NLL as a mean over its own tokens (approximately; the
        # Trainer's cross-device factor is already in nll).
        nll_micro = nll.detach() * (ga if scaled else 1)
        self._accumulate(nll_micro, outputs.alpha.detach(), ortho, expected)
        return (loss, outputs) if return_outputs else loss

    def _accumulate(self, nll: torch.Tensor, alpha: torch.Tensor, ortho: torch.Tensor,
                    expected: torch.Tensor) -> None:
        a = self._acc
        flat = alpha.reshape(-1, alpha.shape[-1]).float()
        a["nll"] = a.get("nll", 0.0) + nll.float()
        a["n"] = a.get("n", 0) + 1
        a["alpha_sum"] = a.get("alpha_sum", 0.0) + flat.sum(0)
        a["alpha_n"] = a.get("alpha_n", 0) + flat.shape[0]
        a["entropy"] = a.get("entropy", 0.0) + routing_entropy(flat) * flat.shape[0]
        self._last_ortho, self._last_expected = float(ortho), float(expected)

    def _reduce_accumulated(self, a: dict[str, Any]) -> dict[str, Any]:
        """Every process's accumulators combined (NLL averaged over processes, routing summed);
        called on every process at the same logging step."""
        if self.accelerator.num_processes == 1 or not a.get("n"):
            return a
        r = self.accelerator.num_processes
        flat = torch.cat([torch.as_tensor(a["nll"], dtype=torch.float32).reshape(1) / r,
                          torch.tensor([float(a["n"]), float(a["alpha_n"])]),
                          torch.as_tensor(a["entropy"], dtype=torch.float32).reshape(1),
                          torch.as_tensor(a["alpha_sum"], dtype=torch.float32).reshape(-1)])
        flat = self.accelerator.reduce(flat.to(self.accelerator.device), reduction="sum").cpu()
        return {"nll": flat[0], "n": a["n"], "alpha_n": float(flat[2]), "entropy": flat[3],
                "alpha_sum": flat[4:]}

    def vital_signs(self) -> dict[str, float]:
        """NLL, orthogonality, lambda, sparsity (mean/union/per expert), routing entropy and
        mean alpha per expert since the last log."""
        a, self._acc = self._reduce_accumulated(self._acc), {}
        with torch.no_grad():
            gated = self.full_gated()
        sparsity = measured_sparsity(gated)
        lams = self.lagrangian.multipliers
        out: dict[str, float] = {
            "lambda": max(lams, key=abs),
            "target": float(self.target(self.state.global_step)),
            "ortho": self._last_ortho,
            "sparsity_mean": sparsity["mean"],
            "sparsity_union": sparsity["union"],
            "expected_sparsity_union": getattr(self, "_last_expected", math.nan),
            "live_fraction": live_fraction(gated),
        }
        for i, s in enumerate(sparsity["per_expert"]):
            out[f"sparsity_expert_{i}"] = s
        if self.lagrangian.is_per_expert:
            out.update({f"lambda_expert_{i}": v for i, v in enumerate(lams)})
        if a.get("n"):
            out["nll"] = float(a["nll"]) / a["n"]
            out["routing_entropy"] = float(a["entropy"]) / a["alpha_n"]
            for i, v in enumerate((a["alpha_sum"] / a["alpha_n"]).tolist()):
                out[f"alpha_mean_{i}"] = v
        return out

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.model.training:
            logs.update(self.vital_signs())
        super().log(logs, start_time)

    # ---------------------------------------------------------------- checkpoints
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Under FSDP2 every process gathers the model and the main process writes the same
        files as a single-process run (the Trainer then adds its sharded checkpoint)."""
        if not self.is_fsdp_enabled:
            return super().save_model(output_dir, _internal_call)
        with torch.no_grad():
            state = self._simoe().simoe_state_dict()  # collective: every process gathers
        self._save(output_dir, simoe_state=state)
        wait_for_everyone()
        return None

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None,
              simoe_state: dict | None = None) -> None:
        """The SIMoE files of a run (``simoe_state``: already gathered; the Trainer's own
        ``state_dict`` is not in this format and is not used)."""
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        self._simoe().save_pretrained(output_dir, simoe_state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        tmp = Path(output_dir) / f".{TRAINER_STATE_NAME}.tmp"
        tmp.write_text(json.dumps({"lambda": self.lagrangian.value,
                                   "lagrangian": self.lagrangian.state_dict(),
                                   "args": self.args.to_dict()}, indent=2, default=str))
        os.replace(tmp, Path(output_dir) / TRAINER_STATE_NAME)

    def _load_from_checkpoint(self, resume_from_checkpoint: str,
                              model: torch.nn.Module | None = None) -> None:
        ckpt = Path(resume_from_checkpoint)
        fsdp_ckpt = any(ckpt.glob("pytorch_model_fsdp*"))  # transformers' own test
        if self.is_fsdp_enabled:  # the Trainer's FSDP checkpoint holds every parameter
            if not fsdp_ckpt:
                raise ValueError(f"{ckpt} was not written under FSDP: resume it without FSDP")
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        else:
            if fsdp_ckpt:
                raise ValueError(f"{ckpt} was written under FSDP (its model and optimizer "
                                 "state are FSDP's): resume it under FSDP")
            self._simoe().load_simoe_state_dict(load_file(ckpt / WEIGHTS_NAME))
        state_file = ckpt / TRAINER_STATE_NAME
        if state_file.is_file():
            state = json.loads(state_file.read_text())
            self.lagrangian.load_state_dict(state.get("lagrangian", state))

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best:
            self._load_from_checkpoint(best)
