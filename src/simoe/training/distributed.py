"""What `train(job)` needs from several processes (``accelerate launch``, ``torchrun``): who
writes files, who waits, and a value or an error computed once on the main process for all.

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
