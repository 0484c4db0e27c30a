"""`sami train`: train a model with the SAMI objective on samples.jsonl (`--method dpo`: DPO through TRL on the
same samples, `sami.comparisons.dpo`)."""

from __future__ import annotations

import argparse

# CLI flag -> SAMIConfig field, for the options passed through unchanged (None = keep the config's default).
CONFIG_FLAGS: dict[str, str] = {
    "max_steps": "max_steps",
    "learning_rate": "learning_rate",
    "per_device_train_batch_size": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "optim": "optim",
    "beta": "beta",
    "logprob_normalize": "logprob_normalize",
    "eos": "eos",
    "logprob_chunk_size": "logprob_chunk_size",
    "include_eos": "include_eos",
    "max_prompt_length": "max_prompt_length",
    "max_response_length": "max_response_length",
    "truncate_prompt_left": "truncate_prompt_left",
    "seed": "seed",
    "report_to": "report_to",
    "bf16": "bf16",
    "save_steps": "save_steps",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="samples.jsonl (id, prompts, responses)")
    parser.add_argument(
        "--method", choices=["sami", "dpo"], default="sami", help="sami (default) or dpo (TRL, sami[compare])"
    )
    parser.add_argument(
        "--model", default=None, help="model folder, cached hub id, GGUF file or 'default' (default: the config's)"
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer reference (default: the model's)")
    parser.add_argument("--output-dir", required=True, help="where the checkpoint and log_history.json go")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: 1 epoch)")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--per-device-train-batch-size", type=int, default=None, help="queries per micro-batch")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=None)
    parser.add_argument("--optim", default=None, help="adamw_torch (default), rmsprop, sgd, ...")
    parser.add_argument("--beta", type=float, default=None, help="weight of the KL to the starting model (0)")
    parser.add_argument("--logprob-normalize", choices=["mean", "sum"], default=None)
    parser.add_argument(
        "--eos",
        choices=["generated", "always", "never"],
        default=None,
        help="score EOS where the model ended (generated, default), always or never",
    )
    parser.add_argument(
        "--include-eos", action=argparse.BooleanOptionalAction, default=None, help="older spelling of --eos"
    )
    parser.add_argument(
        "--logprob-chunk-size", type=int, default=None, help="positions per LM-head chunk (default automatic, 0 = off)"
    )
    parser.add_argument("--max-prompt-length", type=int, default=None)
    parser.add_argument("--max-response-length", type=int, default=None)
    parser.add_argument("--truncate-prompt-left", action="store_true", default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--report-to", default=None, help="none (default), tensorboard, ...")
    parser.add_argument("--bf16", action="store_true", default=None, help="bf16 mixed precision")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter (merged into the saved model)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--config", help="run config (YAML): model, LoRA and training settings; flags override it")
    parser.add_argument("--save-steps", type=int, default=None, help="resume checkpoint every N steps (default 2)")
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
    group = parser.add_argument_group("multi-process (accelerate)")
    group.add_argument(
        "--accelerate-config", help="ddp, fsdp, zero3 or an accelerate config file: rerun under `accelerate launch`"
    )
    group.add_argument("--num-processes", type=int, help="processes (GPUs) over all machines")
    group.add_argument("--num-machines", type=int, help="machines taking part (run this on each of them)")
    group.add_argument("--machine-rank", type=int, default=0, help="this machine's rank (0 = the main machine)")
    group.add_argument("--main-process-ip", help="address of machine 0 (num machines > 1)")
    group.add_argument("--main-process-port", type=int, help="port on machine 0 (num machines > 1)")


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
    out = {field: getattr(args, flag) for flag, field in CONFIG_FLAGS.items() if getattr(args, flag) is not None}
    if "eos" in out:
        out.setdefault("include_eos", None)
    elif "include_eos" in out:
        out["eos"] = "generated"
    return out


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import os
    import sys

    if (args.accelerate_config or args.num_processes or args.num_machines) and "LOCAL_RANK" not in os.environ:
        from sami.launch import accelerate_command, relaunch_argv, run_launched

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
        from sami.comparisons.dpo import train_dpo_command

        print(train_dpo_command(args, config_overrides(args)))
        return 0

    from sami.models import LoraSettings
    from sami.trainer import SAMIConfig, train_sami

    model, lora = args.model, None
    if args.config:
        from sami.config import load_config
        from sami.pipeline import training_arguments

        run_config = load_config(args.config)
        base = training_arguments(run_config, output_dir=args.output_dir, max_steps=args.max_steps or -1)
        config = dataclasses.replace(base, **config_overrides(args))
        model = model or run_config.model.policy
        lora = run_config.model.lora
    else:
        config = SAMIConfig(output_dir=args.output_dir, **config_overrides(args))
    if args.lora:
        lora = LoraSettings(r=args.lora_r, alpha=args.lora_alpha)
    model = model or "default"
    path = train_sami(
        model, args.samples, args.output_dir, config, lora=lora, tokenizer_ref=args.tokenizer, resume=args.resume
    )
    print(path)
    return 0
