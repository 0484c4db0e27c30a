"""Supervised finetuning on SAMI's self-generated samples (context distillation), trained with TRL's `SFTTrainer`.

A `samples.jsonl` record holds C responses, response j generated under constitution j, constitution 0 the positive
one (`sami.sampling`). Its SFT example, the classic constitutional baseline (context distillation: Askell et al.
2021, Bai et al. 2022; the SFT arm of the SAMI follow-up, arXiv 2410.01704):

- completion: response 0, the one written under the positive constitution, with the whitespace the model wrote
  before it (`meta.separators`); TRL appends the tokenizer's EOS to every completion (as DPO's; SAMI's
  `eos: generated` has no counterpart here). Only the completion's tokens are trained on (TRL's
  `completion_only_loss` for prompt-completion data);
- prompt: `query` (default) = the bare query, so the model learns to behave as the constitution asks without being
  told (the training template from the line holding `{query}` on; chat style: the user message, after the query's
  own system text if it has one, without the constitution: `sami.comparisons.dpo.query_prompt`);
  `constitution` = constitution 0's training prompt, the ablation (plain finetuning on the model's own answers
  under the principles).

`train_sft` trains like `sami.trainer.train_sami` and `sami.comparisons.dpo.train_dpo`: resume checkpoints every
`save_steps`, the final model exported as a safetensors folder (LoRA merged), `log_history.json` written last.
TRL is the optional extra `sami[compare]`; it is imported only when training.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import datasets

from sami.comparisons.dpo import _completion, check_prompt_form, query_prompt
from sami.comparisons.settings import SFTSettings
from sami.comparisons.trl_args import shared_training_fields, trl_class, trl_config
from sami.comparisons.trl_train import train_command, train_with_trl
from sami.errors import SamiInputError
from sami.io import iter_jsonl
from sami.prompts import PromptTemplate
from sami.run_config import RunConfig
from sami.tokens import response_context
from sami.trainer_fields import SFT, method_flags

log = logging.getLogger(__name__)

PROMPT_FORMS = ("query", "constitution")


# ---- the dataset ---------------------------------------------------------------------------------------
def sft_records(
    samples_path: str | os.PathLike,
    *,
    prompt: str = "query",
    template: PromptTemplate | None = None,
    tokenizer: Any = None,
) -> list[dict]:
    """The SFT examples of `samples.jsonl`: `{"id", "prompt", "completion"}` per record (see the module docstring).
    A bad record raises `SamiInputError` naming file:line."""
    check_prompt_form(prompt, PROMPT_FORMS, template)
    out = []
    for lineno, rec in iter_jsonl(samples_path):
        where = f"{samples_path}:{lineno}"
        for key in ("id", "prompts", "responses") + (("query",) if prompt == "query" else ()):
            if key not in rec:
                raise SamiInputError(f"{where}: missing field '{key}'")
        prompts, responses = rec["prompts"], rec["responses"]
        if not (isinstance(prompts, list) and isinstance(responses, list) and len(prompts) == len(responses) >= 1):
            raise SamiInputError(f"{where}: needs lists of prompts and responses of the same length")
        if not str(responses[0]).strip():
            raise SamiInputError(f"{where}: the positive constitution's response is empty")
        separators, _ = response_context(rec, len(responses))
        text = prompts[0] if prompt == "constitution" else query_prompt(template, rec, tokenizer)
        completion = _completion(text, str(responses[0]), separators[0] if separators else None)
        out.append({"id": str(rec["id"]), "prompt": text, "completion": completion})
    if not out:
        raise SamiInputError(f"{samples_path}: no samples")
    return out


def load_sft_dataset(samples_path: str | os.PathLike, **kwargs):
    """`sft_records` as a `datasets.Dataset` (what `SFTTrainer` takes)."""
    return datasets.Dataset.from_list(sft_records(samples_path, **kwargs))


# ---- settings --------------------------------------------------------------------------------------------
def sft_config(output_dir: str | os.PathLike, **fields: Any):
    """A TRL `SFTConfig` with SAMI training's defaults where TRL's differ (`trl_args.trl_config`); no packing and
    TRL's completion-only loss."""
    fields = {"packing": False, "completion_only_loss": True, **fields}
    return trl_config(trl_class("SFTConfig"), SFT, output_dir, **fields)


def sft_arguments(config: RunConfig, *, output_dir: str | os.PathLike, max_steps: int):
    """The `SFTConfig` of one iteration's SFT stage: the run's training settings (batch, optimizer, schedule, seed,
    logging, resume checkpoints), the learning rate and extra fields from `comparisons.sft`."""
    sft = (config.comparisons.sft if config.comparisons is not None else None) or SFTSettings()
    return sft_config(
        output_dir,
        **shared_training_fields(config, SFT, sft),
        max_steps=max_steps,
        **sft.trainer_args,
    )


# ---- training --------------------------------------------------------------------------------------------
def train_sft(
    model_ref,
    samples_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    config,
    *,
    prompt: str = "query",
    template: PromptTemplate | None = None,
    lora=None,
    tokenizer_ref: str | os.PathLike | None = None,
    resume: bool = False,
) -> Path:
    """Train `model_ref` with TRL's SFT on the examples of `samples.jsonl`; return the checkpoint folder
    (`output_dir`). `config` is an `SFTConfig` (`sft_config`, `sft_arguments`). Files and resume as
    `sami.trainer.train_sami`."""
    return train_with_trl(
        "SFT",
        model_ref,
        output_dir,
        config,
        dataset_of=lambda tokenizer: load_sft_dataset(
            samples_path, prompt=prompt, template=template, tokenizer=tokenizer
        ),
        lora=lora,
        tokenizer_ref=tokenizer_ref,
        resume=resume,
    )


def train_sft_from_config(
    config: RunConfig, *, model_ref: str, samples_path: Path, output_dir: Path, max_steps: int
) -> Path:
    """One iteration's SFT model as the run config says, resuming from a checkpoint an earlier attempt left."""
    sft = (config.comparisons.sft if config.comparisons is not None else None) or SFTSettings()
    args = sft_arguments(config, output_dir=output_dir, max_steps=sft.max_steps or max_steps)
    return train_sft(
        model_ref,
        samples_path,
        output_dir,
        args,
        prompt=sft.prompt,
        template=config.prompts.build(),
        lora=config.model.lora,
        resume=True,
    )


# SAMIConfig fields of `sami train` that `--method sft` uses (the rest, `--beta` too, are refused).
SFT_FLAGS = method_flags(SFT, own=set(SFTSettings.model_fields) - {"trainer_args"})


# ---- `sami train --method sft` ---------------------------------------------------------------------------
def train_sft_command(args, overrides: dict[str, Any]) -> Path:
    """`sami train --method sft`: `overrides` are the SAMIConfig fields set on the command line; those SFTConfig
    shares override the --config's training settings, SAMI-only ones (and `--beta`) are an error."""
    return train_command(
        args,
        overrides,
        method="sft",
        shared=SFT_FLAGS,
        unused="not used by --method sft",
        arguments=sft_arguments,
        config_of=sft_config,
        default_prompt="query",
        train=train_sft,
    )
