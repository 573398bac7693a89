"""SIMoEConfig: every knob of the SIMoE module, validated when built, saved as JSON."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_NAME = "simoe_config.json"

GATE_MODES = ("deterministic", "stochastic", "free")
ROUTING_LEVELS = ("instance", "token", "task")


@dataclass
class SIMoEConfig:
    """Configuration of a Sparse Interpolated MoE (defaults: paper Table 6 and SIMOE.md)."""

    num_experts: int = 8
    """M, experts per targeted parameter (they share one delta and differ by their gates)."""
    target_sparsity: float = 0.75
    """tau: the constraint is that at least this fraction of gated parameters is gated off."""
    ortho_weight: float = 5e-6
    """beta of the orthogonality penalty ||Z Z^T - I||_F."""
    init_drop_prob: float = 0.05
    """P(z = 0) of every gate at initialisation (paper appendix B.1)."""
    init_noise_std: float = 0.01
    """sigma of the Gaussian noise on the gate logits at init (Louizos et al.'s reference code)."""
    gate_mode: str = "deterministic"
    """'deterministic' (median gate, the paper's choice), 'stochastic' (sampled in training) or
    'free' (real-valued masks starting at 1, no sparsity: ablation c)."""
    straight_through: bool = True
    """Deterministic gates in training pass the clamp's gradient straight through (values
    unchanged): closed gates still hear the NLL and can reopen. False: the literal clamp, whose
    closed gates receive no gradient from the data."""
    routing: str = "instance"
    """'instance' (one alpha per prompt), 'token' (per token) or 'task' (per task id)."""
    router_hidden_size: int = 256
    """Hidden width of the router MLP; 0 makes the router a single linear layer."""
    num_tasks: int = 0
    """Number of task ids, only for routing='task'."""
    target_linear: bool = True
    """Target every nn.Linear and transformers Conv1D except the input/output embeddings (narrow
    it with include/exclude, e.g. to leave a vision tower or MoE router gates alone)."""
    target_norms: bool = True
    """Target the scale (and bias) of every normalisation layer."""
    target_biases: bool = True
    """Give biases of targeted modules their own element-wise gated delta."""
    target_embeddings: bool = False
    """Also target the input embedding matrix (opt-in)."""
    target_lm_head: bool = False
    """Also target the output projection / LM head (opt-in)."""
    include: list[str] = field(default_factory=list)
    """Regexes on module names; when non-empty only matching modules are targeted."""
    exclude: list[str] = field(default_factory=list)
    """Regexes on module names that are never targeted."""
    base_model_name_or_path: str | None = None
    """Where the frozen base model comes from (hub id or path); filled in by from_base."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""

        def bad(name: str, why: str) -> None:
            raise ValueError(f"SIMoEConfig.{name}: {why} (got {getattr(self, name)!r})")

        if not isinstance(self.num_experts, int) or self.num_experts < 1:
            bad("num_experts", "must be an integer >= 1")
        if not (0.0 <= self.target_sparsity < 1.0):
            bad("target_sparsity", "must lie in [0, 1)")
        if self.ortho_weight < 0 or not math.isfinite(self.ortho_weight):
            bad("ortho_weight", "must be a finite number >= 0")
        if not (0.0 < self.init_drop_prob < 1.0):
            bad("init_drop_prob", "must lie in (0, 1)")
        if self.init_noise_std < 0:
            bad("init_noise_std", "must be >= 0")
        if self.gate_mode not in GATE_MODES:
            bad("gate_mode", f"must be one of {GATE_MODES}")
        if self.routing not in ROUTING_LEVELS:
            bad("routing", f"unknown routing level; choose one of {ROUTING_LEVELS}")
        if self.router_hidden_size < 0:
            bad("router_hidden_size", "must be >= 0")
        if self.routing == "task" and self.num_tasks < 1:
            bad("num_tasks", "routing='task' needs num_tasks >= 1")
        for name in ("include", "exclude"):
            for pattern in getattr(self, name):
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(
                        f"SIMoEConfig.{name}: invalid regex {pattern!r}: {err}") from err
        if not (self.target_linear or self.target_norms or self.target_embeddings
                or self.target_lm_head):
            raise ValueError("SIMoEConfig: every target_* flag is off, nothing would be upcycled")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SIMoEConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"SIMoEConfig: unknown field(s) {unknown}")
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        """Write simoe_config.json atomically (temporary file, then rename)."""
        path = Path(directory) / CONFIG_NAME
        tmp = path.with_name(f".{CONFIG_NAME}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SIMoEConfig:
        path = Path(directory)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no SIMoE config at {path}")
        return cls.from_dict(json.loads(path.read_text()))
