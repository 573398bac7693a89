"""Small run-time helpers shared by training and evaluation: atomic files, model limits,
peak memory (the process's, and the tensors' own)."""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

logger = logging.getLogger(__name__)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def check_output_dir(path: str | os.PathLike) -> Path:
    """Raise ValueError (one line) unless ``path`` is a writable directory or can be created as
    one; creates nothing (a probe file in the nearest existing directory is removed at once)."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"output {out}: {probe} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise ValueError(f"output {out}: cannot write in {probe} ({err.strerror or err})"
                         ) from None
    return out


def check_output_file(path: str | os.PathLike) -> Path:
    """Raise ValueError (one line) unless ``path`` can be written as a file."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise ValueError(f"output {out} is a directory, not a file")
    check_output_dir(out.parent)
    return out


def model_max_length(model: torch.nn.Module) -> int | None:
    """The longest sequence the model's positions cover, if its config says."""
    cfg = model.config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def fit_source_length(model: torch.nn.Module, max_source: int, max_target: int) -> int:
    """The prompt budget that leaves ``max_target`` tokens within the model's positions
    (lowered with one warning when ``max_source + max_target`` does not fit)."""
    limit = model_max_length(model)
    if limit is None or max_source + max_target <= limit:
        return max_source
    fitted = max(1, limit - max_target)
    logger.warning("the model reads at most %d tokens: prompts limited to %d tokens", limit,
                   fitted)
    return fitted


def reset_peak_memory() -> None:
    """Start a new peak-memory window (CUDA stats; on Linux the process's RSS high-water mark),
    so several runs in one process each report their own peak."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb() -> float:
    """Max allocated CUDA memory when CUDA is in use, else the process's peak RSS (MiB) since
    the last :func:`reset_peak_memory`."""
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


class TensorPeak(TorchDispatchMode):
    """Peak bytes of the tensor storages alive while the block runs: every storage an operator
    returns, counted once (views share it) until it is freed -- what an allocator without slack
    would need, the CPU's analogue of ``torch.cuda.max_memory_allocated``. ``start``: tensors
    that exist before the block (weights, gradients, optimizer moments)."""

    def __init__(self, start: list[torch.Tensor] = ()) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0
        for t in start:
            self._add(t)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def _add(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()  # one Python object per live storage: its id is a key
        key = id(storage)
        if not storage.data_ptr() or key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._add(t)
        return out
