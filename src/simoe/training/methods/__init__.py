"""Training methods, registered by name. Adding one: a module with a :class:`Method` subclass
and one entry in :data:`METHODS`."""

from __future__ import annotations

from ..job import TrainJob
from ..validation import unused_settings as _unused
from .base import Method, PlainCollator
from .btx import BranchTrainMix
from .full import FullFineTuning
from .lora import LoRA
from .simoe import SIMoE
from .upcycle import MoETrainer, SparseUpcycling

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (SIMoE, FullFineTuning, LoRA, SparseUpcycling, BranchTrainMix)}
METHOD_SPECIFIC: frozenset[str] = frozenset().union(*(m.uses for m in METHODS.values()))


def get_method(name: str) -> Method:
    """A fresh instance of the method registered as ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {tuple(METHODS)}")
    return METHODS[name]()


def unused_settings(job: TrainJob) -> list[str]:
    """``--flag=value`` for every option ``job`` sets that its method does not use."""
    return _unused(job, get_method(job.method).uses, METHOD_SPECIFIC)


__all__ = ["METHODS", "METHOD_SPECIFIC", "Method", "MoETrainer", "PlainCollator", "get_method",
           "unused_settings"]
