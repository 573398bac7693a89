"""Training: a job, the methods that can run it, the SIMoE trainer, and the run directory.

    job.py          TrainJob, prepare (data, tokenizer, base), the shared schedule
    validation.py   allowed range of every option; what a resumed run may change (job.json)
    rundir.py       claiming the run directory, complete checkpoints, metrics.jsonl
    methods/        one module per method (simoe, full, lora, upcycle, btx), registered by name
    trainer.py      SIMoETrainer: the SIMoE objective, lambda, vital signs, SIMoE checkpoints
    routing_cache.py, stats.py
    run.py          train(job): job -> claim run dir -> prepare -> method.build -> trainer
                    -> method.save
"""

from .job import TrainJob
from .methods import METHODS, Method, get_method
from .routing_cache import compute_routing_embeddings, load_or_compute
from .run import train
from .rundir import FINAL_STATS_NAME, METRICS_NAME, MetricsLogger
from .stats import final_stats, kept_capacity
from .trainer import SIMoETrainer, SIMoETrainingArguments

__all__ = [
    "FINAL_STATS_NAME",
    "METHODS",
    "METRICS_NAME",
    "Method",
    "MetricsLogger",
    "SIMoETrainer",
    "SIMoETrainingArguments",
    "TrainJob",
    "compute_routing_embeddings",
    "final_stats",
    "get_method",
    "kept_capacity",
    "load_or_compute",
    "train",
]
