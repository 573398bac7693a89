"""Training methods, registered by name. Adding one: a module with a :class:`Method` subclass
and one entry in :data:`METHODS`."""

from __future__ import annotations

from .base import Method, PlainCollator
from .btx import BranchTrainMix
from .full import FullFineTuning
from .lora import LoRA
from .simoe import SIMoE
from .upcycle import MoETrainer, SparseUpcycling

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (SIMoE, FullFineTuning, LoRA, SparseUpcycling, BranchTrainMix)}


def get_method(name: str) -> Method:
    """A fresh instance of the method registered as ``name``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {tuple(METHODS)}")
    return METHODS[name]()


__all__ = ["METHODS", "Method", "MoETrainer", "PlainCollator", "get_method"]
