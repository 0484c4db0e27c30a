"""Training and the `sami train --method dpo|sft` command of the TRL comparison methods, shared by DPO and SFT: load
the tokenizer and model, build the method's TRL trainer, resume from the newest checkpoint and export as
`sami.trainer.train_sami` does. TRL (the extra `sami[compare]`) is imported only when training
(`trl_args.trl_class`)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import set_seed

import sami.trainer
from sami import models  # models.load_model, looked up at call time (tests patch it)
from sami.checkpoints import last_checkpoint, resolve_tokenizer_ref, train_and_export
from sami.comparisons.trl_args import trl_class
from sami.errors import SamiInputError
from sami.models import LoraSettings
from sami.prompts import TemplateSettings
from sami.run_config import load_config

log = logging.getLogger(__name__)


def train_with_trl(
    method: str,
    model_ref,
    output_dir: str | os.PathLike,
    config,
    *,
    dataset_of: Callable[[Any], Any],
    lora=None,
    tokenizer_ref: str | os.PathLike | None = None,
    resume: bool = False,
    reference_copy: bool = False,
) -> Path:
    """Train `model_ref` with `trl.<method>Trainer` ("DPO", "SFT") on `dataset_of(tokenizer)`; return `output_dir`.
    `reference_copy`: pass a frozen copy of the starting model as `ref_model` (none under LoRA: TRL then uses the
    model with its adapter off)."""
    # `_NoFinalCheckpoint` is looked up on `sami.trainer` at call time so that a test can swap it.
    output_dir = Path(output_dir)
    tokenizer = models.load_tokenizer(resolve_tokenizer_ref(model_ref, tokenizer_ref))
    dataset = dataset_of(tokenizer)
    args = dataclasses.replace(config, output_dir=str(output_dir))
    set_seed(args.seed)
    model = models.load_model(model_ref, lora=lora) if isinstance(model_ref, str | os.PathLike) else model_ref
    extra = {}
    if reference_copy:
        # A frozen copy of the start as the reference (TRL would reload it from the config's path, which a GGUF or a
        # model built in memory does not have); under LoRA, TRL uses the model with its adapter off.
        extra["ref_model"] = (
            None if hasattr(model, "peft_config") else copy.deepcopy(model).eval().requires_grad_(False)
        )
    model.train()
    trainer = trl_class(f"{method}Trainer")(
        model=model, args=args, train_dataset=dataset, processing_class=tokenizer, **extra
    )
    trainer.add_callback(sami.trainer._NoFinalCheckpoint())
    checkpoint = last_checkpoint(output_dir) if resume else None
    if checkpoint is not None:
        log.info("resuming %s training from %s", method, checkpoint)
    return train_and_export(trainer, tokenizer, output_dir, checkpoint, merge_lora=True)


def train_command(
    args,
    overrides: dict[str, Any],
    *,
    method: str,
    shared: set[str],
    unused: str,
    arguments: Callable[..., Any],
    config_of: Callable[..., Any],
    default_prompt: str,
    train: Callable[..., Path],
) -> Path:
    """`sami train --method <method>` ("dpo", "sft"): `overrides` are the SAMIConfig fields set on the command line;
    those in `shared` override the --config's training settings (`arguments(run_config, ...)`, else
    `config_of(output_dir, ...)`), any other set one is an error ending in `unused`. The prompt form is
    `--<method>-prompt`, else the run config's `comparisons.<method>.prompt`, else `default_prompt`."""
    overrides = {k: v for k, v in overrides.items() if k != "output_dir"}  # passed on its own below
    other = sorted(k for k, v in overrides.items() if k not in shared and v is not None)
    if other:
        flags = ", ".join("--" + k.replace("_", "-") for k in other)
        raise SamiInputError(f"{flags}: {unused}")
    overrides = {k: v for k, v in overrides.items() if k in shared}
    lora, model, form = None, args.model, getattr(args, f"{method}_prompt")
    if args.config:
        run_config = load_config(args.config)
        base = arguments(run_config, output_dir=args.output_dir, max_steps=args.max_steps or -1)
        config = dataclasses.replace(base, **overrides)
        template, lora = run_config.prompts.build(), run_config.model.lora
        model = model or run_config.model.policy
        section = getattr(run_config.comparisons, method) if run_config.comparisons is not None else None
        form = form or (section.prompt if section is not None else None)
    else:
        config = config_of(args.output_dir, **overrides)
        template = TemplateSettings().build()
    if args.lora:
        lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha)
    return train(
        model or "default",
        args.samples,
        args.output_dir,
        config,
        prompt=form or default_prompt,
        template=template,
        lora=lora,
        tokenizer_ref=args.tokenizer,
        resume=args.resume,
    )
