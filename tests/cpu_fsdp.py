"""Importing this lets the ranks of a CPU launch (gloo) run FSDP: the tests' way to run the real Trainer under the
shipped `fsdp.yaml` without a GPU.

accelerate turns FSDP on only for GPU-class devices: on the CPU the ranks are `MULTI_CPU` data parallel and the
FSDP plugin the launch config describes is dropped. FSDP2's `fully_shard` itself runs on the CPU over gloo (see
`test_lm_head.py`), so this keeps the plugin: `AcceleratorState` is marked FSDP when it was given one. Everything
after that (wrapping, `DTensor` shards, the Trainer's checkpoints through `torch.distributed.checkpoint`, the final
gather) is accelerate's and transformers' own code.
"""

from __future__ import annotations

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_init = AcceleratorState.__init__


def _init_keeping_fsdp(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        if self._mixed_precision != "no":
            fsdp_plugin.set_mixed_precision(self._mixed_precision)
        self.fsdp_plugin = fsdp_plugin
        self.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


AcceleratorState.__init__ = _init_keeping_fsdp
