"""The TRL argument objects of the comparison methods (`DPOConfig`, `SFTConfig`): SAMI training's defaults and the
run's shared training settings (the declared trainer fields, `sami.trainer_fields`), so every method trains with the
same batch, optimizer, schedule and seed."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from pydantic import BaseModel

from sami.errors import SamiInputError
from sami.models import accelerator_present
from sami.run_config import RunConfig
from sami.trainer_fields import checkpoint_strategy, method_defaults, method_fields


def trl_class(name: str):
    """`trl.<name>` (e.g. "DPOConfig", "SFTTrainer"); TRL is the optional extra `sami[compare]`."""
    try:
        # optional extra sami[compare]: a clear error where it is missing
        import trl
    except ImportError:
        raise SamiInputError("the comparison methods need TRL: pip install 'sami[compare]'") from None
    return getattr(trl, name)


def trl_config(config_cls: type, method: str, output_dir: str | os.PathLike, **fields: Any):
    """A TRL config (`DPOConfig`, `SFTConfig`) of `method` ("dpo", "sft") starting from SAMI training's defaults
    (every declared trainer field the method takes: learning rate, batch, optimizer, schedule, logging, resume
    checkpoints every 2 steps keeping the newest), no activation checkpointing and no truncation; an unknown field is
    an input error naming it."""
    defaults = {
        **method_defaults(method),  # the declared trainer fields this method takes (`sami.trainer_fields`)
        "activation_checkpointing": False,  # TRL's default is on (as the deprecated gradient_checkpointing)
        "max_length": None,
        "dataloader_pin_memory": accelerator_present(),  # as SAMIConfig: torch warns about pinning without one
    }
    fields = {**defaults, **fields}
    fields["save_strategy"] = checkpoint_strategy(fields["save_steps"], fields["save_strategy"])
    if fields.get("bf16") and not accelerator_present():
        fields.setdefault("use_cpu", True)  # as SAMIConfig: transformers allows CPU bf16 only when told it is on CPU
    known = {f.name for f in dataclasses.fields(config_cls)}
    for key in fields:
        if key not in known:
            raise SamiInputError(f"{key}: not a {config_cls.__name__} field")
    return config_cls(output_dir=str(output_dir), **fields)


def shared_training_fields(config: RunConfig, method: str, section: BaseModel) -> dict[str, Any]:
    """The run's `training` settings `method` shares with SAMI (`sami.trainer_fields.method_fields`) and its seed,
    with the method's own `section` (`comparisons.<method>`) over them where it sets one (its learning_rate)."""
    fields = {**config.training.model_dump(include=set(method_fields(method))), "seed": config.seed}
    own = {k: v for k, v in section.model_dump(include=set(fields)).items() if v is not None}
    return {**fields, **own}
