"""`SAMIConfig`: `TrainingArguments` plus SAMI's options, with SAMI's defaults (every field declared in
`sami.trainer_fields`). Its own module, below both `sami.collator` (which reads it) and `sami.trainer`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from transformers import TrainingArguments

from sami.errors import SamiInputError
from sami.logprobs import NORMALIZE
from sami.models import accelerator_present
from sami.tokens import resolve_eos
from sami.trainer_fields import checkpoint_strategy, sami_dataclass_fields


def _declared_fields(cls: type) -> type:
    """Give `cls` (before `@dataclass`) one field per declared trainer field (`sami.trainer_fields`): SAMI's options
    and its defaults where `TrainingArguments`' differ, each with its help (`sami train --help`)."""
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    for name, (annotation, dc_field) in sami_dataclass_fields().items():
        annotations[name] = annotation
        setattr(cls, name, dc_field)
    cls.__annotations__ = annotations
    return cls


@dataclass
@_declared_fields
class SAMIConfig(TrainingArguments):
    """`TrainingArguments` plus the SAMI options, with SAMI's defaults: every field declared in
    `sami.trainer_fields.TRAINER_FIELDS` (the one list shared with the run config and the comparison methods)."""

    def __post_init__(self):
        if self.logprob_normalize not in NORMALIZE:
            raise SamiInputError(f"logprob_normalize: expected one of {NORMALIZE}, got {self.logprob_normalize!r}")
        if self.n_constitutions is not None and self.n_constitutions < 2:
            raise SamiInputError(f"n_constitutions: SAMI needs at least 2, got {self.n_constitutions}")
        if self.include_eos is not None:
            mapped = "always" if self.include_eos else "never"
            if self.eos not in ("generated", mapped):
                raise SamiInputError(f"include_eos={self.include_eos} contradicts eos={self.eos!r}; set only eos")
            self.eos = mapped
        self.eos = resolve_eos(self.eos)
        if self.beta < 0:
            raise SamiInputError(f"beta: must be >= 0, got {self.beta}")
        if self.logprob_chunk_size is not None and self.logprob_chunk_size < 0:
            raise SamiInputError(f"logprob_chunk_size: must be >= 0 (0 = unchunked), got {self.logprob_chunk_size}")
        for name in ("max_prompt_length", "max_response_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SamiInputError(f"{name}: must be a positive number of tokens, got {value}")
        self.save_strategy = checkpoint_strategy(self.save_steps, self.save_strategy)
        if not accelerator_present():
            self.dataloader_pin_memory = False  # pinned memory needs an accelerator; torch warns without one
            if self.bf16:
                self.use_cpu = True  # transformers allows CPU bf16 autocast only when told it is on the CPU
        if self.ddp_backend is None and _deepspeed_on_cpu():
            # accelerate counts the ranks of a DeepSpeed launch only when it is told the backend, which it cannot
            # infer without an accelerator; DeepSpeed's CPU accelerator uses gloo.
            self.ddp_backend = "gloo"
        try:
            super().__post_init__()
        except SamiInputError:
            raise
        except ValueError as e:  # TrainingArguments' own checks of the user's fields
            raise SamiInputError(f"training settings: {' '.join(str(e).split())}") from None


def _deepspeed_on_cpu() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and not torch.cuda.is_available()
