"""`sami train`: train a model with the SAMI objective on samples.jsonl (`--method dpo` / `--method sft`: DPO or SFT
through TRL on the same samples, `sami.comparisons.dpo` / `sami.comparisons.sft`).

Its flags are `SAMIConfig`'s fields (`sami.trainer_fields` plus `TrainingArguments`), so this module imports
transformers and torch at the top: `sami.cli` imports it only for `sami train`."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import typing

from transformers import HfArgumentParser

from sami.comparisons.dpo import train_dpo_command
from sami.comparisons.sft import train_sft_command
from sami.errors import SamiInputError
from sami.launch import accelerate_command, relaunch_argv, run_launched
from sami.models import LoraSettings
from sami.run_config import load_config
from sami.sami_config import SAMIConfig
from sami.stage_settings import training_arguments
from sami.trainer import train_sami

# SAMIConfig fields `sami train` requires on its command line.
REQUIRED_FIELDS = {"output_dir"}


class _GivenOnly:
    """An argument container whose dataclass flags have no parser default: the namespace holds only the fields
    given on the command line, and `SAMIConfig` (or the run config under --config) supplies the rest."""

    def __init__(self, group) -> None:
        self.group = group

    def add_argument(self, *names: str, **kwargs):
        kwargs["default"] = argparse.SUPPRESS
        if kwargs.get("dest") is None and names[0].lstrip("-") in REQUIRED_FIELDS:
            kwargs["required"] = True
        return self.group.add_argument(*names, **kwargs)


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per `SAMIConfig` field (TrainingArguments plus SAMI's), made by `transformers.HfArgumentParser`
    as TRL's CLI does, so each flag's help is the field's own."""
    group = _GivenOnly(parser.add_argument_group("training (SAMIConfig: transformers TrainingArguments + SAMI)"))
    hints = typing.get_type_hints(SAMIConfig)
    for f in dataclasses.fields(SAMIConfig):
        if f.init:
            f = copy.copy(f)  # HfArgumentParser narrows the field's type in place
            f.type = hints[f.name]
            HfArgumentParser._parse_dataclass_field(group, f)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="samples.jsonl (id, prompts, responses)")
    parser.add_argument(
        "--method",
        choices=["sami", "dpo", "sft"],
        default="sami",
        help="sami (default), dpo or sft (TRL, sami[compare])",
    )
    parser.add_argument(
        "--model", default=None, help="model folder, cached hub id, GGUF file or 'default' (default: the config's)"
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer reference (default: the model's)")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (merged into the saved model)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--config", help="run config (YAML): model, LoRA and training settings; flags override it")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the newest checkpoint-N in --output-dir left by an interrupted run (if any)",
    )
    dpo = parser.add_argument_group("--method dpo (--beta is DPO's β, default 0.1)")
    dpo.add_argument(
        "--dpo-prompt",
        choices=["constitution", "query"],
        default=None,
        help="pair prompt: the positive constitution's training prompt (default) or the bare query (RLCD)",
    )
    sft = parser.add_argument_group("--method sft")
    sft.add_argument(
        "--sft-prompt",
        choices=["query", "constitution"],
        default=None,
        help="example prompt: the bare query (default, context distillation) or the positive constitution's prompt",
    )
    group = parser.add_argument_group("multi-process (accelerate)")
    group.add_argument(
        "--accelerate-config", help="ddp, fsdp, zero3 or an accelerate config file: rerun under `accelerate launch`"
    )
    group.add_argument("--num-processes", type=int, help="processes (GPUs) over all machines")
    group.add_argument("--num-machines", type=int, help="machines taking part (run this on each of them)")
    group.add_argument("--machine-rank", type=int, default=0, help="this machine's rank (0 = the main machine)")
    group.add_argument("--main-process-ip", help="address of machine 0 (num machines > 1)")
    group.add_argument("--main-process-port", type=int, help="port on machine 0 (num machines > 1)")
    add_training_arguments(parser)


# `sami train` options that only shape the `accelerate launch` (dropped when rerunning under it; True = takes a value)
LAUNCH_FLAGS = {
    "--accelerate-config": True,
    "--num-processes": True,
    "--num-machines": True,
    "--machine-rank": True,
    "--main-process-ip": True,
    "--main-process-port": True,
}


def config_overrides(args: argparse.Namespace) -> dict:
    """The SAMIConfig fields set on the command line (--eos or --include-eos replaces both of the config's)."""
    given = vars(args)
    out = {f.name: given[f.name] for f in dataclasses.fields(SAMIConfig) if f.name in given}
    if "eos" in out:
        out.setdefault("include_eos", None)
    elif "include_eos" in out:
        out["eos"] = "generated"
    return out


def training_config(args: argparse.Namespace, run_config=None):
    """The `SAMIConfig` of `sami train`: the flags given, over the --config's training section (`run_config`, when
    the caller has loaded it already), else over SAMIConfig's own defaults (the same ones `sami run` resolves)."""
    overrides = config_overrides(args)
    if run_config is None and args.config:
        run_config = load_config(args.config)
    if run_config is None:
        return SAMIConfig(**overrides)
    base = training_arguments(run_config, output_dir=args.output_dir, max_steps=overrides.get("max_steps", -1))
    return dataclasses.replace(base, **overrides)


def run(args: argparse.Namespace) -> int:
    steps = getattr(args, "max_steps", None)
    if steps is not None and (steps == 0 or steps < -1):
        raise SamiInputError(
            f"--max-steps: expected a positive number of optimizer steps (or -1: epochs), got {steps}"
        )

    if (args.accelerate_config or args.num_processes or args.num_machines) and "LOCAL_RANK" not in os.environ:
        cmd = accelerate_command(
            relaunch_argv(sys.argv[1:], LAUNCH_FLAGS),
            num_processes=args.num_processes or args.num_machines or 1,
            config=args.accelerate_config,
            num_machines=args.num_machines or 1,
            machine_rank=args.machine_rank,
            main_process_ip=args.main_process_ip,
            main_process_port=args.main_process_port,
        )
        run_launched(cmd, what="sami train")
        print(args.output_dir)
        return 0

    if args.method == "dpo":
        print(train_dpo_command(args, config_overrides(args)))
        return 0
    if args.method == "sft":
        print(train_sft_command(args, config_overrides(args)))
        return 0

    model, lora, run_config = args.model, None, None
    if args.config:
        run_config = load_config(args.config)
        model = model or run_config.model.policy
        lora = run_config.model.lora
    config = training_config(args, run_config)
    if args.lora:
        lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha)
    model = model or "default"
    path = train_sami(
        model, args.samples, args.output_dir, config, lora=lora, tokenizer_ref=args.tokenizer, resume=args.resume
    )
    print(path)
    return 0
