"""The run config's `comparisons.dpo` and `comparisons.sft` sections (`DPOSettings`, `SFTSettings`).

Their own module, below `sami.run_config` and free of `sami.run_config`, so the config imports the schema without the
methods' training code (which reads the run config: `sami.comparisons.dpo` / `sft`). A `trainer_args` key is checked
against TRL's config class (when TRL is installed) and against the one rule for a knob given twice
(`sami.trainer_fields.refuse_twice`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sami.trainer_fields import DPO, SFT, method_fields, refuse_twice


def known_fields(config_name: str, value: dict[str, Any]) -> dict[str, Any]:
    """Validate a `trainer_args` mapping against `trl.<config_name>`'s fields (unchecked when TRL is missing: training
    checks again)."""
    try:
        # optional extra sami[compare]: checked only where installed
        import trl
    except ImportError:
        return value
    known = {f.name for f in dataclasses.fields(getattr(trl, config_name))}
    for key in value:
        if key not in known:
            raise ValueError(f"unknown {config_name} field {key!r}")
    return value


def check_trainer_args(model: type[BaseModel], value: dict[str, Any], *, method: str, config_name: str):
    """`trainer_args` of a comparison section: known to `trl.<config_name>`, and no knob set elsewhere too."""
    known_fields(config_name, value)
    own = set(model.model_fields) - {"trainer_args"}
    refuse_twice(value, method=method, section=f"comparisons.{method}", own=own, takes=method_fields(method))
    return value


class DPOSettings(BaseModel):
    """The `comparisons.dpo` section of a run config: a DPO model trained at every iteration beside SAMI's."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.1, gt=0.0, description="DPO's β: how far the policy may move from the reference model")
    learning_rate: float | None = Field(None, gt=0.0, description="None: training.learning_rate (SAMI's)")
    prompt: Literal["constitution", "query"] = Field(
        "constitution", description="the pair's prompt: the positive constitution's training prompt or the bare query"
    )
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (None: the SAMI iteration's steps)")
    trainer_args: dict[str, Any] = Field(
        default_factory=dict, description="more DPOConfig fields (loss_type, max_length, ...)"
    )

    @field_validator("trainer_args")
    @classmethod
    def _known_trainer_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_trainer_args(cls, value, method=DPO, config_name="DPOConfig")


class SFTSettings(BaseModel):
    """The `comparisons.sft` section of a run config: an SFT model trained at every iteration beside SAMI's."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float | None = Field(None, gt=0.0, description="None: training.learning_rate (SAMI's)")
    prompt: Literal["query", "constitution"] = Field(
        "query",
        description="the example's prompt: the bare query (context distillation) or, as an ablation, the positive "
        "constitution's training prompt",
    )
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (None: the SAMI iteration's steps)")
    trainer_args: dict[str, Any] = Field(
        default_factory=dict, description="more SFTConfig fields (max_length, neftune_noise_alpha, ...)"
    )

    @field_validator("trainer_args")
    @classmethod
    def _known_trainer_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_trainer_args(cls, value, method=SFT, config_name="SFTConfig")
