"""The run config's adapters: one home for every `RunConfig` -> stage-settings function.

A stage is a function over its inputs and one settings object; these functions build that object from a run's
config (`sami.run_config.RunConfig`), filling what a stage's settings leave open (dtype, task, sampling scheme, C)
from the run's. They sit above `sami.run_config` and the stages' own settings modules, so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sami.evaluation.settings import BaselineSettings, EvaluationSettings
from sami.run_config import RunConfig
from sami.sami_config import SAMIConfig


def evaluation_settings(config: RunConfig) -> EvaluationSettings:
    """The evaluation settings of a run: `config.evaluation` with the sampling scheme, C, dtype and task defaulting
    to the run's, the run's prompt style (its templates are used), and `generation: run` as the run's `generation`."""
    ev: EvaluationSettings = config.evaluation
    updates: dict[str, Any] = {"style": config.prompts.style}
    if ev.scheme is None:
        updates["scheme"] = config.sampling.scheme
    if ev.n_constitutions is None:
        updates["n_constitutions"] = config.sampling.n_constitutions
    if ev.dtype is None:
        updates["dtype"] = config.model.dtype
    if ev.task is None:
        updates["task"] = config.prompts.task
    if ev.generation == "run":
        updates["generation"] = config.generation
    return ev.model_copy(update=updates)


def evaluation_baselines(config: RunConfig, *, against_base: bool) -> dict[str, BaselineSettings]:
    """The baselines of a run's evaluation: with `against_base` (iteration >= 1) the base model as 'base' in the
    run's prompt style, then `evaluation.baselines` (whose own 'base' is replaced by the run's then)."""
    out: dict[str, BaselineSettings] = {}
    if against_base:
        out["base"] = BaselineSettings(model=config.model.policy, style=config.prompts.style)
    for name, spec in config.evaluation.baselines.items():
        if name != "base" or not against_base:
            out[name] = spec if isinstance(spec, BaselineSettings) else BaselineSettings(model=str(spec))
    return out


def training_arguments(config: RunConfig, *, output_dir: Path, max_steps: int):
    """The `SAMIConfig` (TrainingArguments) of one training stage, from the run config."""
    tr = config.training
    fields = tr.model_dump(exclude={"trainer_args"})
    return SAMIConfig(
        output_dir=str(output_dir),
        max_steps=max_steps,
        seed=config.seed,
        n_constitutions=config.sampling.n_constitutions,
        attn_implementation=config.model.attn_implementation,
        **fields,
        **tr.trainer_args,
    )
