"""Branch-Train-MiX: one dense copy per domain trained on its domain (built in ``build``), their
FFNs (plus the base FFN) become Mixtral experts with averaged non-FFN weights, then everything
trains on all data. Budget: half of the steps for the branches (split equally), half for the mix.
"""

from __future__ import annotations

import copy
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from torch import nn
from transformers import Trainer, TrainingArguments

from ...baselines.btx import DEFAULT_SNI_DOMAINS, FALLBACK_DOMAIN, btx_merge, domain_of
from ..distributed import num_processes
from ..job import Prepared, TrainJob, total_steps
from ..rundir import METRICS_NAME, MetricsLogger
from .base import PlainCollator, plain_rows
from .upcycle import SparseUpcycling

logger = logging.getLogger(__name__)


def domains(prep: Prepared) -> dict[str, list[int]]:
    """Example indices per BTX domain."""
    mapping = DEFAULT_SNI_DOMAINS
    if prep.job.domains:
        mapping = json.loads(Path(prep.job.domains).read_text())
    groups: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(prep.examples):
        # A record with a category (SNI) is placed by the category map, unknown categories in
        # the fallback domain: SNI's own "Domains" field names topics ("Animals", "Books"),
        # dozens of them, not BTX training domains. A record without a category (JSONL) uses
        # its own domain field, else the fallback.
        if ex.category:
            domain = domain_of(ex.category, mapping)
        else:
            domain = ex.domain or FALLBACK_DOMAIN
        groups[domain].append(i)
    return dict(sorted(groups.items()))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "domain"


class BranchTrainMix(SparseUpcycling):
    name = "btx"
    uses = frozenset({"lr", "moe_top_k", "domains"})
    supports_resume = False  # the branches train in memory

    def check(self, job: TrainJob) -> None:
        super().check(job)
        if num_processes() > 1:
            raise ValueError("--method btx trains its branches in one process; run it without "
                             "accelerate launch (or with one process)")

    def build(self, prep: Prepared) -> nn.Module:
        job = prep.job
        groups = domains(prep)
        steps = total_steps(job, len(prep.encoded))
        branch_steps = max(1, steps // (2 * len(groups)))
        self.info = {"domains": {k: len(v) for k, v in groups.items()},
                     "branch_steps": branch_steps,
                     "mix_steps": max(1, steps - branch_steps * len(groups))}
        branches = []
        for name, idx in groups.items():
            logger.info("BTX branch %r: %d examples, %d steps", name, len(idx), branch_steps)
            dense = copy.deepcopy(prep.base)
            for p in dense.parameters():
                p.requires_grad_(True)
            out = prep.output / "branches" / _safe(name)
            out.mkdir(parents=True, exist_ok=True)
            Trainer(model=dense, args=super().training_args(prep, output_dir=str(out),
                                                            max_steps=branch_steps,
                                                            save_strategy="no"),
                    train_dataset=plain_rows(prep, idx),
                    data_collator=PlainCollator(prep.tokenizer),
                    callbacks=[MetricsLogger(out / METRICS_NAME)]).train()
            branches.append(dense)
        return btx_merge(prep.base, branches, top_k=job.moe_top_k, seed=job.seed)

    def training_args(self, prep: Prepared, **overrides: Any) -> TrainingArguments:
        return super().training_args(prep, max_steps=self.info["mix_steps"], **overrides)

    def save(self, prep: Prepared, model: nn.Module, trainer: Trainer) -> dict[str, Any]:
        return {**super().save(prep, model, trainer), "btx": self.info}
