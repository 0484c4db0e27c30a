"""The optimizer `training.optim` names is the optimizer that steps, under every launcher config.

accelerate's DeepSpeed path replaces the Trainer's torch optimizer when ZeRO offloads the optimizer to the CPU
(`offload_optimizer_device: cpu`, the 70B recipe): `map_pytorch_optim_to_deepspeed` turns anything but AdamW,
Adagrad and Lion into `DeepSpeedCPUAdam`, so the paper's RMSprop would silently train as Adam. It honours the
DeepSpeed key `zero_force_ds_cpu_optimizer: false`, with which DeepSpeed steps the Trainer's own optimizer on the
offloaded float32 partitions on the CPU (slower than DeepSpeed's fused CPU Adam, but the named algorithm).
`keep_torch_optimizer` sets it; a DeepSpeed config with its own `optimizer` section is refused in one line.
`OptimizerCheck` then compares, when training starts, the optimizer that actually steps (under the
accelerate / DeepSpeed wrappers) with the class the Trainer built for `optim`, and stops on a mismatch.
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer, TrainerCallback

from sami.errors import SamiInputError


def keep_torch_optimizer(trainer: Trainer) -> None:
    """Make accelerate's DeepSpeed path keep `trainer`'s torch optimizer (no-op without DeepSpeed)."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None) if trainer.is_deepspeed_enabled else None
    if plugin is None:
        return
    config = plugin.deepspeed_config
    if "optimizer" in config:
        raise SamiInputError(
            f"launcher config: its DeepSpeed 'optimizer' section ({config['optimizer'].get('type')}) would replace "
            f"training.optim={trainer.args.optim}; remove the section and name the optimizer in training.optim"
        )
    config["zero_force_ds_cpu_optimizer"] = False


def stepping_optimizer(optimizer: Any) -> Any:
    """The optimizer under accelerate's and DeepSpeed's wrappers (each keeps the one it wraps as `.optimizer`)."""
    seen = set()
    while hasattr(optimizer, "optimizer") and id(optimizer) not in seen:
        seen.add(id(optimizer))
        optimizer = optimizer.optimizer
    return optimizer


def class_name(obj: Any) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class OptimizerCheck(TrainerCallback):
    """At the start of training: the stepping optimizer is an instance of the class `optim` names, else stop
    (`enforce=False`: the Trainer was given its optimizer, which is then only recorded). Keeps its class name in
    `name` (written to `train_info.json`)."""

    def __init__(self, trainer: Trainer, *, enforce: bool = True):
        self.trainer, self.enforce = trainer, enforce
        self.name: str | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        running = stepping_optimizer(kwargs.get("optimizer") or self.trainer.optimizer)
        self.name = class_name(running)
        if not self.enforce:
            return control
        expected, _ = self.trainer.get_optimizer_cls_and_kwargs(args, self.trainer.model)
        if isinstance(expected, type) and not isinstance(running, expected):
            raise SamiInputError(
                f"training.optim={args.optim} names {class_name(expected)}, but {self.name} would step under this "
                "launcher config; use a launcher config that keeps the named optimizer"
            )
        return control
