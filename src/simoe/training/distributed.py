"""What `train(job)` needs from several processes (``accelerate launch``, ``torchrun``): who
writes files, who waits, a value or an error computed once on the main process for all, and,
under FSDP2, the gates whole where the objective reads them and the model whole where it is
saved.

One process (plain ``simoe train``) needs no process group: every helper is then a plain call.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch < 2.5
    from torch.distributed._tensor import DTensor

from ..gates import gate

T = TypeVar("T")


def state() -> PartialState:
    """accelerate's process state (initialises the process group under ``accelerate launch``
    or ``torchrun``). Several processes on a machine without CUDA use gloo on the CPU: the
    Trainer's own state then agrees (without ``ACCELERATE_USE_CPU`` accelerate would run each
    process alone)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def num_processes() -> int:
    return state().num_processes


def is_main() -> bool:
    return state().is_main_process


def wait_for_everyone() -> None:
    if num_processes() > 1:
        state().wait_for_everyone()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the block first (it writes a cache), then the others (they read)."""
    if num_processes() == 1:
        yield
        return
    with state().main_process_first():
        yield


class _Raised:
    """An exception raised on the main process, shipped to the others."""

    def __init__(self, error: BaseException) -> None:
        self.type, self.args = type(error), error.args


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on the main process only; its result (pickled) or its exception reaches every
    process, so a refusal on the main process (a non-empty output, changed settings) stops all
    of them with the same one-line error instead of leaving them waiting."""
    if num_processes() == 1:
        return fn()
    box: list[Any] = [None]
    error = None
    if is_main():
        try:
            box[0] = fn()
        except Exception as err:  # noqa: BLE001 - re-raised on every process below
            error, box[0] = err, _Raised(err)
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    if isinstance(box[0], _Raised):
        raise box[0].type(*box[0].args)
    return box[0]


# ---------------------------------------------------------------------- FSDP2
class FullGates:
    """A GatedDelta whose gate logits FSDP may hold as shards, seen whole: ``log_alpha`` is the
    all-gathered tensor (differentiable: the regulariser's gradient, the same on every process,
    reaches each process's own shard), or the unsharded parameter itself where FSDP kept the
    unit whole after its forward (its gradient is then averaged with the rest); every other
    attribute is the module's."""

    def __init__(self, gated_delta: Any) -> None:
        self._gd = gated_delta
        la = gated_delta.log_alpha  # a unit left unsharded after its forward holds it whole
        self.log_alpha = la.full_tensor() if isinstance(la, DTensor) else la

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401
        return getattr(self._gd, name)

    @property
    def num_live(self) -> int:
        return self.log_alpha.shape[1]

    def gates(self, training: bool = False) -> torch.Tensor:
        return gate(self.log_alpha, self._gd.mode, training, self._gd.straight_through)


def full_gates(gated: list) -> list:
    """``gated`` itself, or under FSDP2 (DTensor gate logits) each one gathered whole: what the
    objective, the dual step and the vital signs read outside the forward. Collective."""
    if not any(isinstance(gd.log_alpha, DTensor) for gd in gated):
        return gated
    return [FullGates(gd) for gd in gated]


def gather_parameters(modules: Iterator[torch.nn.Module] | list[torch.nn.Module]) -> None:
    """Replace every DTensor parameter of ``modules`` (not their children) by a plain
    parameter holding it whole, on every process (collective): after training, so that the
    final pruning and saving see whole tensors. The model cannot train under FSDP afterwards."""
    whole: dict[int, torch.nn.Parameter] = {}  # tied parameters stay tied
    for module in modules:
        for name, param in list(module.named_parameters(recurse=False)):
            if isinstance(param, DTensor):
                if id(param) not in whole:
                    whole[id(param)] = torch.nn.Parameter(param.full_tensor().detach(),
                                                          requires_grad=param.requires_grad)
                setattr(module, name, whole[id(param)])
