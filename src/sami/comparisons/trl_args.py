"""The TRL argument objects of the comparison methods (`DPOConfig`, `SFTConfig`): SAMI training's defaults and the
run's shared training settings, so every method trains with the same batch, optimizer, schedule and seed."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from sami.errors import SamiInputError
from sami.models import accelerator_present

if TYPE_CHECKING:
    from sami.config import RunConfig

# TrainingSettings fields every comparison method takes from the run's `training` section.
SHARED_TRAINING_FIELDS = {
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "bf16",
    "logging_steps",
    "report_to",
    "save_steps",
}


def trl_class(name: str):
    """`trl.<name>` (e.g. "DPOConfig", "SFTTrainer"); TRL is the optional extra `sami[compare]`."""
    try:
        import trl
    except ImportError:
        raise SamiInputError("the comparison methods need TRL: pip install 'sami[compare]'") from None
    return getattr(trl, name)


def trl_config(config_cls: type, output_dir: str | os.PathLike, **fields: Any):
    """A TRL config (`DPOConfig`, `SFTConfig`) with SAMI training's defaults where TRL's differ (no activation
    checkpointing, float32 unless bf16 is asked for, log every step, resume checkpoints every 2 steps keeping the
    newest, no truncation); an unknown field is an input error naming it."""
    defaults = {
        "activation_checkpointing": False,  # TRL's default is on (as the deprecated gradient_checkpointing)
        "bf16": False,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 2,
        "save_total_limit": 1,
        "max_length": None,
        "report_to": "none",
        "lr_scheduler_type": "constant",
        "dataloader_pin_memory": accelerator_present(),  # as SAMIConfig: torch warns about pinning without one
    }
    fields = {**defaults, **fields}
    if fields.get("save_steps") == 0:
        fields["save_strategy"] = "no"
    known = {f.name for f in dataclasses.fields(config_cls)}
    for key in fields:
        if key not in known:
            raise SamiInputError(f"{key}: not a {config_cls.__name__} field")
    return config_cls(output_dir=str(output_dir), **fields)


def shared_training_fields(config: RunConfig) -> dict[str, Any]:
    """The run's `training` settings every comparison method shares with SAMI, plus the run's seed."""
    return {**config.training.model_dump(include=SHARED_TRAINING_FIELDS), "seed": config.seed}


def known_fields(config_name: str, value: dict[str, Any]) -> dict[str, Any]:
    """Validate a `trainer_args` mapping against `trl.<config_name>`'s fields (unchecked when TRL is missing: training
    checks again)."""
    try:
        import trl
    except ImportError:
        return value
    known = {f.name for f in dataclasses.fields(getattr(trl, config_name))}
    for key in value:
        if key not in known:
            raise ValueError(f"unknown {config_name} field {key!r}")
    return value
