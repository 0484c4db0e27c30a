"""The trainer fields: every training knob SAMI declares, once, with its type, default, help and the methods using it.

Derived from `TRAINER_FIELDS` (a newcomer adding a knob adds one `TrainerField` here):

- `TrainerKnobs`, the pydantic base of the run config's `training` section (`sami.run_config.TrainingSettings`): one
  field per entry with `section=True`, in this order, with its constraints and description;
- `sami.sami_config.SAMIConfig` (`TrainingArguments` + SAMI's options): one dataclass field per entry, overriding
  `TrainingArguments`' default and help where SAMI changes them (`sami_dataclass_fields`), hence also
  `sami train`'s flags (generated from `SAMIConfig` by `HfArgumentParser`);
- the TRL configs of the comparison methods (`sami.comparisons.trl_args`): the defaults (`method_defaults`) and the
  run's `training` values (`method_fields`) of the entries whose `methods` name "dpo" / "sft", and the flags
  `sami train --method dpo|sft` accepts (`method_flags`).

`RUN_SET` names the `TrainingArguments` fields a run sets from other sections. `refuse_twice` is the one rule for a
knob given twice (a `trainer_args` key that is also a `training` field, a method's own setting or set by the run):
refused in one line naming both places. Written by hand: no library declares one knob for several trainer classes.
This module imports no torch or transformers (the run config's schema uses it); `known_trainer_args` imports
transformers when called.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

SAMI, DPO, SFT = "sami", "dpo", "sft"
ALL = frozenset({SAMI, DPO, SFT})
ONLY_SAMI = frozenset({SAMI})


@dataclass(frozen=True)
class TrainerField:
    """One training knob. `type`: what the run config accepts; `trainer_type`: the `SAMIConfig` annotation where it
    is wider (`TrainingArguments`' own); `help`: None for a `TrainingArguments` field whose default (`default`, the
    same value: a test pins it) and help SAMI keeps; `methods`: the trainers that take the run's value (and this
    default); `section`: a field of the run config's `training` section (else `SAMIConfig` only, set through
    `trainer_args` or by the run); `constraints`: pydantic `Field` bounds (ge, gt, ...)."""

    name: str
    type: Any
    default: Any
    help: str | None
    methods: frozenset[str] = ALL
    section: bool = True
    constraints: dict[str, Any] = field(default_factory=dict)
    trainer_type: Any = None

    @property
    def inherited(self) -> bool:
        """`TrainingArguments`' own field with its own default and help (help None): SAMIConfig leaves it as is."""
        return self.help is None

    def description(self) -> str:
        return self.help or f"TrainingArguments' {self.name} (`sami train --help`)"

    def default_value(self) -> Any:
        """A fresh copy of the default (lists are mutable)."""
        return copy.deepcopy(self.default)


TRAINER_FIELDS: tuple[TrainerField, ...] = (
    # The run config's `training` section, in its order (the dumped config, hence its hash, follows it).
    TrainerField(
        "learning_rate",
        float,
        5e-7,
        "Learning rate: the paper's 5e-7 (Table 1; its llama3-70b runs used 1e-6), where TrainingArguments says 5e-5.",
        constraints={"gt": 0.0, "allow_inf_nan": False},
    ),
    TrainerField(
        "per_device_train_batch_size",
        int,
        128,
        "Queries per micro-batch on each process: the paper's 128 queries per optimizer step on one process (with N "
        "processes, divide by N or use gradient_accumulation_steps). TrainingArguments says 8.",
        constraints={"ge": 1},
    ),
    TrainerField(
        "gradient_accumulation_steps",
        int,
        1,
        None,
        constraints={"ge": 1},
    ),
    TrainerField("optim", str, "adamw_torch", "Optimizer: adamw_torch, rmsprop, sgd, ..."),
    TrainerField(
        "lr_scheduler_type",
        str,
        "constant",
        "Learning-rate schedule. Constant: SAMI iterations take only a few optimizer steps.",
    ),
    TrainerField("warmup_steps", int, 0, None, constraints={"ge": 0}),
    TrainerField("weight_decay", float, 0.0, None),
    TrainerField("max_grad_norm", float, 1.0, None),
    TrainerField("bf16", bool, False, None),
    TrainerField(
        "logging_steps",
        int,
        1,
        "Log every N optimizer steps (SAMI runs are short).",
        constraints={"ge": 1},
        trainer_type=float,
    ),
    TrainerField(
        "logprob_normalize",
        Literal["mean", "sum"],
        "mean",
        "'mean': log-prob per response token (the authors' code); 'sum': summed log-prob.",
        methods=ONLY_SAMI,
        trainer_type=str,
    ),
    TrainerField(
        "eos",
        Literal["generated", "always", "never"],
        "generated",
        "Which responses get an end-of-sequence token scored: 'generated' (those the model ended with EOS, as "
        "recorded in the samples), 'always' (the authors' TL;DR code) or 'never' (their HH release code).",
        methods=ONLY_SAMI,
        trainer_type=str,
    ),
    TrainerField(
        "include_eos",
        bool | None,
        None,
        "Older spelling of eos: true = 'always', false = 'never' (None: use eos).",
        methods=ONLY_SAMI,
    ),
    TrainerField(
        "beta",
        float,
        0.0,
        "Weight of a token-level KL(policy || reference) on the response positions; 0 disables it. The reference "
        "is the model before training (the base model with adapters off under LoRA).",
        methods=ONLY_SAMI,
        constraints={"ge": 0.0},
    ),
    TrainerField(
        "logprob_chunk_size",
        int | None,
        None,
        "Response positions per chunk of the LM head + log-softmax (`sami.lm_head`): only target log-probs (and the "
        "KL) are kept and the backward recomputes a chunk's logits. None: automatic (chunks of about 32 MiB of "
        "float32 logits once a batch's kept logits would exceed 256 MiB; below that unchunked, which saves one head "
        "matmul); 0: unchunked (full-vocabulary logits kept).",
        methods=ONLY_SAMI,
        constraints={"ge": 0},
    ),
    TrainerField(
        "max_prompt_length",
        int | None,
        None,
        "Longest prompt in tokens; longer ones are an error unless truncated.",
        methods=ONLY_SAMI,
    ),
    TrainerField(
        "max_response_length",
        int | None,
        None,
        "Longest response in tokens (EOS included); longer ones are an error, never truncated.",
        methods=ONLY_SAMI,
    ),
    TrainerField(
        "truncate_prompt_left",
        bool,
        False,
        "Cut prompts longer than max_prompt_length from the left (a warning counts them).",
        methods=ONLY_SAMI,
    ),
    TrainerField(
        "report_to",
        list[str],
        ["tensorboard"],
        "Logging integrations: TensorBoard (in output_dir/runs) by default; 'none' for none.",
        trainer_type=None | str | list[str],
    ),
    TrainerField(
        "save_steps",
        int,
        2,
        "Checkpoint every N optimizer steps (the paper's iterations take 2-6), for resume; 0: never.",
        constraints={"ge": 0},
        trainer_type=float,
    ),
    # SAMIConfig only: set through `training.trainer_args`, or by the run (RUN_SET).
    TrainerField(
        "attn_implementation",
        str,
        "sdpa",
        "Attention of the trained model: sdpa, eager or flex_attention (no CPU backward).",
        methods=ONLY_SAMI,
        section=False,
    ),
    TrainerField(
        "n_constitutions",
        int | None,
        None,
        "Constitutions per example (C >= 2). None accepts any C, the same within a batch.",
        methods=ONLY_SAMI,
        section=False,
    ),
    TrainerField(
        "merge_lora_on_save",
        bool,
        True,
        "Under LoRA, export the final checkpoint with the adapter merged into a plain model folder (what "
        "`sami.models.load_model` reads). False saves the adapter alone.",
        methods=ONLY_SAMI,
        section=False,
    ),
    TrainerField(
        "remove_unused_columns", bool, False, "Keep 'prompts'/'responses' columns.", methods=ONLY_SAMI, section=False
    ),
    TrainerField(
        "save_strategy",
        str,
        "steps",
        "Resume checkpoints ('steps': every save_steps); the final model is exported by train_sami.",
        section=False,
    ),
    TrainerField("save_total_limit", int | None, 1, "Keep only the newest resume checkpoint.", section=False),
)

FIELDS_BY_NAME = {f.name: f for f in TRAINER_FIELDS}

# TrainingArguments fields a run sets from other sections (never given in `trainer_args`), and the methods that
# take them from there.
RUN_SET: dict[str, tuple[str, frozenset[str]]] = {
    "output_dir": ("the run folder", ALL),
    "max_steps": ("iterations.steps", ALL),
    "seed": ("the top-level seed", ALL),
    "n_constitutions": ("sampling.n_constitutions", ONLY_SAMI),
    "attn_implementation": ("model.attn_implementation", ONLY_SAMI),
}


def section_names() -> list[str]:
    """The fields of the run config's `training` section (besides `trainer_args`), in order."""
    return [f.name for f in TRAINER_FIELDS if f.section]


def method_fields(method: str) -> list[str]:
    """The `training` section fields a method takes from the run config."""
    return [f.name for f in TRAINER_FIELDS if f.section and method in f.methods]


def method_defaults(method: str) -> dict[str, Any]:
    """SAMI's defaults of every declared field a method takes (its TRL config starts from these)."""
    return {f.name: f.default_value() for f in TRAINER_FIELDS if method in f.methods}


def method_flags(method: str, own: Iterable[str] = ()) -> set[str]:
    """The `sami train` flags (SAMIConfig field names) `--method <method>` uses: its declared fields, the run-set
    ones it takes, and `own` (the method's own settings, e.g. DPO's `beta`)."""
    declared = {f.name for f in TRAINER_FIELDS if method in f.methods}
    return declared | {name for name, (_, methods) in RUN_SET.items() if method in methods} | set(own)


def _pydantic_field(f: TrainerField) -> tuple[Any, Any]:
    if isinstance(f.default, (list, dict)):
        info = Field(default_factory=f.default_value, description=f.description(), **f.constraints)
    else:
        info = Field(f.default, description=f.description(), **f.constraints)
    return f.type, info


TrainerKnobs: type[BaseModel] = create_model(
    "TrainerKnobs",
    __config__=ConfigDict(extra="forbid"),
    __doc__="The declared trainer fields of the run config's `training` section (`TRAINER_FIELDS`).",
    **{f.name: _pydantic_field(f) for f in TRAINER_FIELDS if f.section},
)


def sami_dataclass_fields() -> dict[str, tuple[Any, dataclasses.Field]]:
    """`{name: (annotation, dataclasses.field)}` of every declared field SAMIConfig declares (all but the
    inherited `TrainingArguments` ones)."""
    out = {}
    for f in TRAINER_FIELDS:
        if f.inherited:
            continue
        if isinstance(f.default, (list, dict)):
            dc_field = dataclasses.field(default_factory=f.default_value, metadata={"help": f.help})
        else:
            dc_field = dataclasses.field(default=f.default, metadata={"help": f.help})
        out[f.name] = (f.trainer_type or f.type, dc_field)
    return out


def checkpoint_strategy(save_steps: float, strategy: str) -> str:
    """`save_steps: 0` means no resume checkpoints (SAMI's and the TRL methods' configs alike)."""
    return "no" if save_steps == 0 and strategy == "steps" else strategy


def known_trainer_args() -> set[str]:
    """Every `SAMIConfig` field name: `TrainingArguments`' (of the installed transformers) plus the declared ones."""
    from transformers import TrainingArguments  # the run config's schema loads it only to check trainer_args

    return {f.name for f in dataclasses.fields(TrainingArguments)} | set(FIELDS_BY_NAME)


def refuse_twice(
    trainer_args: dict[str, Any], *, method: str, section: str, own: Iterable[str] = (), takes: Iterable[str] = ()
) -> None:
    """The one rule for a knob given twice: a `trainer_args` key that `method` also takes from elsewhere (its own
    setting in `section`, a `training` field in `takes`, or a value the run sets) is refused with a `ValueError`
    (pydantic makes it one line naming the field) naming both places."""
    own, takes = set(own), set(takes)
    for key in trainer_args:
        if key in own:
            where = f"{section}.{key}"
        elif key in takes:
            where = f"training.{key}"
        elif key in RUN_SET and method in RUN_SET[key][1]:
            where = RUN_SET[key][0]
        else:
            continue
        raise ValueError(f"{key!r} is set by {where}; give it there, not in trainer_args")
