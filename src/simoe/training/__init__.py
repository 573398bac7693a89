"""Training SIMoE: the Trainer subclass, the routing cache, run statistics and the run driver."""

from .routing_cache import compute_routing_embeddings, load_or_compute
from .run import FINAL_STATS_NAME, TrainJob, train
from .stats import final_stats, kept_capacity
from .trainer import METRICS_NAME, SIMoETrainer, SIMoETrainingArguments

__all__ = [
    "FINAL_STATS_NAME",
    "METRICS_NAME",
    "SIMoETrainer",
    "SIMoETrainingArguments",
    "TrainJob",
    "compute_routing_embeddings",
    "final_stats",
    "kept_capacity",
    "load_or_compute",
    "train",
]
