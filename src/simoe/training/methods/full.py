"""Full fine-tuning: every parameter of the base model trains."""

from __future__ import annotations

from torch import nn

from ..job import Prepared
from .base import Method


class FullFineTuning(Method):
    name = "full"

    def build(self, prep: Prepared) -> nn.Module:
        for p in prep.base.parameters():
            p.requires_grad_(True)
        return prep.base
