"""`simoe.cli` with accelerate's FSDP enabled on CPU processes, for tests/test_distributed.py.

accelerate turns ``ACCELERATE_USE_FSDP`` into FSDP only for accelerator process groups; on
``MULTI_CPU`` (gloo) it silently trains with DDP instead. This launcher lifts that one gate after
accelerate has built its FSDP plugin from the environment, so the real FSDP2 path (accelerate's
``fully_shard`` wrapping, the Trainer's sharded checkpoints, SIMoE's gathers) runs on the CPU.
Run it under ``torchrun`` like ``python -m simoe.cli``.
"""

from __future__ import annotations

import os
import sys

import accelerate.state
from accelerate.utils import DistributedType

_init = accelerate.state.AcceleratorState.__init__


def _fsdp_on_cpu(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    _init(self, *args, **kwargs)
    plugin = kwargs.get("fsdp_plugin")
    if (plugin is not None and self.distributed_type == DistributedType.MULTI_CPU
            and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"):
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = plugin


accelerate.state.AcceleratorState.__init__ = _fsdp_on_cpu

if __name__ == "__main__":
    from simoe.cli import main

    sys.exit(main(sys.argv[1:]))
