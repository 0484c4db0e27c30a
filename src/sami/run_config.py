"""One config for a whole SAMI run: a validated YAML schema.

Every section is a pydantic model that rejects unknown keys. Errors name the field path
(`training.learning_rate: expected a number, got "fast"`) and are raised as `SamiInputError`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sami.cli_settings import read_yaml, validate
from sami.comparisons.settings import DPOSettings, SFTSettings
from sami.compat import transformers_version, translate_trainer_args
from sami.constitutions import load_constitutions
from sami.data import QuerySource
from sami.endpoint import EndpointSettings
from sami.errors import SamiInputError
from sami.evaluation.settings import EvaluationSettings
from sami.filters import FilterSettings
from sami.generation import GenerationSettings, HFGeneration
from sami.models import LoraSettings, check_attention
from sami.prompts import TemplateSettings
from sami.sampling import SamplingSettings
from sami.trainer_fields import SAMI, TrainerKnobs, known_trainer_args, refuse_twice, section_names

DEFAULT_CONFIG = "demo.yaml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Section):
    policy: str = Field(
        "default", description="the model to align (π_0): 'default', a local folder, a GGUF file or a cached hub id"
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field("float32", description="weights dtype")
    trust_remote_code: bool = Field(False, description="allow custom model code from the model folder")
    attn_implementation: str = Field(
        "sdpa",
        description="attention for training and evaluation's scoring: sdpa, eager or flex_attention (GPU; no "
        "backward on the CPU); flash_attention_2 takes no 4D mask, so SAMI's prefix-shared rows cannot use it",
    )
    lora: dict[str, Any] | None = Field(
        None, description="LoRA adapter settings (r, alpha, dropout, target_modules); null trains all weights"
    )

    @field_validator("attn_implementation")
    @classmethod
    def _check_attention(cls, value):
        return check_attention(value)

    @field_validator("lora")
    @classmethod
    def _check_lora(cls, value):
        if value is not None:
            LoraSettings(**value)  # raises TypeError on an unknown key
        return value


class WriterSettings(_Section, EndpointSettings):
    """Who writes the principles and antitheses (`writer` in a run config; the flags of `sami principles write`).
    A server writes when `backend` is openai or `base_url` is given (the `EndpointSettings` fields)."""

    task: str = Field(..., description="what the aligned model does, e.g. 'summarize Reddit posts'")
    principles: list[str] = Field(
        ...,
        min_length=1,
        description="a principle name, optionally with a description: 'concise' or 'comprehensive: covers key "
        "points' (one per principle)",
    )
    model: str = Field("default", description="writer model: 'default', a folder, a GGUF or a hub id")
    backend: Literal["hf", "openai"] = Field(
        "hf", description="hf: a local model; openai: a server (implied by base_url)"
    )
    retries: int = Field(3, ge=0, description="extra attempts per principle on a bad answer")


class DataSettings(_Section):
    train: list[QuerySource] = Field(..., min_length=1, description="training query sources")
    eval: list[QuerySource] = Field(..., min_length=1, description="evaluation query sources")
    train_per_iteration: int | None = Field(None, ge=1, description="queries per iteration (cap of the slice)")
    n_slices: int = Field(2, ge=1, description="iterations alternate between this many disjoint query slices")
    eval_limit: int | None = Field(None, ge=1, description="evaluation queries per source")


class TrainingSettings(TrainerKnobs):
    """The usual knobs, declared once in `sami.trainer_fields` (each is the `SAMIConfig` field of the same name, with
    its default and meaning: `sami train --help`); any other `TrainingArguments` field goes in `trainer_args`."""

    trainer_args: dict[str, Any] = Field(default_factory=dict, description="extra TrainingArguments fields")

    @field_validator("trainer_args")
    @classmethod
    def _known_trainer_args(cls, value: dict[str, Any]) -> dict[str, Any]:
        known = known_trainer_args()
        value = translate_trainer_args(value, known, where="training.trainer_args")
        for key in value:
            if key not in known:
                raise ValueError(f"unknown TrainingArguments field {key!r} (transformers {transformers_version()})")
        refuse_twice(value, method=SAMI, section="training", takes=section_names())
        return value


class IterationSettings(_Section):
    count: int = Field(3, ge=1, description="T: number of SAMI iterations")
    steps: list[int] = Field([2, 4, 6], description="optimizer steps in each iteration (the paper: 2, 4, 6)")
    train_from: Literal["base", "previous"] = Field(
        "base", description="start each iteration's training from π_0 (paper) or π_{t-1}"
    )

    @model_validator(mode="after")
    def _steps_cover_iterations(self):
        if len(self.steps) < self.count:
            raise ValueError(f"steps lists {len(self.steps)} values for {self.count} iterations")
        if any(s < 1 for s in self.steps):
            raise ValueError("every iteration needs at least 1 step")
        return self


class LauncherSettings(_Section):
    """How `sami run` launches its heavy stages; the multi-machine fields are `accelerate launch`'s own options."""

    kind: Literal["local", "accelerate"] = Field(
        "local", description="run training (and hf self-generation) as one process, or under accelerate launch"
    )
    isolation: Literal["auto", "process", "driver"] = Field(
        "auto",
        description="where stages that load a model run: each in a child process of its own (process), in "
        "`sami run`'s process (driver), or auto: process when a GPU is visible or kind is accelerate, else driver",
    )
    num_processes: int = Field(1, ge=1, description="processes over all machines (accelerate's --num_processes)")
    config: str | None = Field(None, description="accelerate config: ddp, fsdp, zero3 or a path")
    num_machines: int = Field(1, ge=1, description="machines (nodes) taking part in each launch")
    machine_rank: int = Field(0, ge=0, description="this machine's rank, 0 .. num_machines - 1")
    main_process_ip: str | None = Field(None, description="address of machine 0 (needed when num_machines > 1)")
    main_process_port: int | None = Field(None, ge=1, le=65535, description="port on machine 0 (default: a free one)")
    extra_args: list[str] = Field(default_factory=list, description="more `accelerate launch` arguments")

    @model_validator(mode="after")
    def _machines(self):
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank {self.machine_rank} is not below num_machines {self.num_machines}")
        if self.num_machines > 1:
            if self.main_process_ip is None:
                raise ValueError("main_process_ip is needed when num_machines > 1 (the address of machine 0)")
            if self.main_process_port is None:
                raise ValueError("main_process_port is needed when num_machines > 1 (every machine must agree)")
            if self.num_processes % self.num_machines:
                raise ValueError(
                    f"num_processes {self.num_processes} (all machines) is not a multiple of num_machines "
                    f"{self.num_machines}"
                )
        return self


class ComparisonSettings(_Section):
    """Methods trained beside SAMI at every iteration, on the same samples and evaluated the same way."""

    dpo: DPOSettings | None = Field(None, description="DPO through TRL (RLCD-style pairs from the samples)")
    sft: SFTSettings | None = Field(
        None, description="SFT through TRL on the positive constitution's responses (context distillation)"
    )


class RunConfig(_Section):
    name: str = Field("sami-run", description="run name (the default output folder is runs/NAME)")
    output_dir: str | None = Field(None, description="where the run is written (default runs/NAME)")
    seed: int = Field(0, ge=0, lt=2**32 - 64, description="the run's seed (numpy and torch take 0 .. 2**32 - 1)")
    model: ModelSettings = Field(default_factory=ModelSettings)
    writer: WriterSettings | None = Field(
        None, description="write the principles with a model instead of loading a file"
    )
    constitutions: str = Field("hh_opus", description="constitution file or bundled name")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    prompts: TemplateSettings = Field(default_factory=TemplateSettings)
    filters: FilterSettings | None = Field(None, description="response filters (default: the task's preset)")
    data: DataSettings
    generation: GenerationSettings = Field(default_factory=HFGeneration)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    iterations: IterationSettings = Field(default_factory=IterationSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    launcher: LauncherSettings = Field(default_factory=LauncherSettings)
    comparisons: ComparisonSettings | None = Field(
        None, description="methods compared with SAMI (e.g. dpo: {}, sft: {})"
    )

    @model_validator(mode="after")
    def _transforms_fit_the_template(self):
        if self.prompts.style != "chat":
            return self
        for section in ("train", "eval"):
            for i, src in enumerate(getattr(self.data, section)):
                if src.transform == "hh_context":
                    raise ValueError(
                        f"data.{section}.{i}.transform: hh_context writes the HH transcript into one query, which "
                        "only the base-style dialogue template reads as a conversation; use hh_first_turn with "
                        "prompts.style: chat"
                    )
        return self

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir or Path("runs") / self.name)


def parse_config(raw: dict | None, *, source: str = "config") -> RunConfig:
    """Validate a config mapping; raises `SamiInputError` naming the first bad field."""
    if raw is not None and not isinstance(raw, dict):
        raise SamiInputError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    return validate(RunConfig, raw, source=source)


def default_config_path() -> Path:
    """The bundled CPU demo config."""
    return Path(str(resources.files("sami") / "assets" / "configs" / DEFAULT_CONFIG))


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> RunConfig:
    """Load a YAML config (the bundled demo when `path` is None) and validate it."""
    path = Path(path) if path is not None else default_config_path()
    if not path.is_file():
        raise SamiInputError(f"{path}: config file not found")
    raw = read_yaml(path)
    if overrides:
        raw = {**raw, **overrides}
    config = parse_config(raw, source=str(path))
    _check_files_exist(config, source=str(path))
    return config


def _check_files_exist(config: RunConfig, *, source: str) -> None:
    """Fail early, naming the field, when a referenced local file does not exist."""
    try:
        load_constitutions(config.constitutions)
    except SamiInputError as e:
        raise SamiInputError(f"{source}: constitutions: {e}") from None
    for section in ("train", "eval"):
        for i, src in enumerate(getattr(config.data, section)):
            path = getattr(src, "path", None)
            if path and not Path(path).exists():
                raise SamiInputError(f"{source}: data.{section}.{i}.path: file not found: {path}")


def config_to_yaml(config: RunConfig) -> str:
    """The resolved config (defaults filled in) as YAML. Holds env var names, never secret values."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
