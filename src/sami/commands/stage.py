"""`sami stage`: one stage of a run folder, as `sami run` launches it under `accelerate launch`.

```
accelerate launch --num_processes 8 -m sami.cli stage generate --run-dir runs/x --iteration 1 --policy MODEL
accelerate launch --num_processes 8 --config_file fsdp.yaml -m sami.cli stage train --run-dir runs/x \\
    --iteration 1 --model MODEL --output-dir runs/x/iter-1/train.partial
```
The run folder's `config.yaml` and `constitutions.json` describe the stage; every process reads them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=["generate", "train"], help="which stage of iteration --iteration")
    parser.add_argument("--run-dir", required=True, help="the run folder (holds config.yaml, constitutions.json)")
    parser.add_argument("--iteration", type=int, required=True, help="iteration t >= 1")
    parser.add_argument("--policy", help="generate: the model that writes the samples (π_{t-1})")
    parser.add_argument("--model", help="train: the starting model")
    parser.add_argument("--output-dir", help="train: checkpoint folder (default: iter-t/train.partial)")
    parser.add_argument("--max-steps", type=int, help="train: optimizer steps (default: iterations.steps[t-1])")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--wait", action="store_true", help="wait for another sami writing the folder to finish")


def run(args: argparse.Namespace) -> int:
    """Under the run folder's lock (the launching `sami run`'s own, when it launched this process; under a bare
    `accelerate launch`, each machine's local rank 0 holds it for the others)."""
    from sami.runlock import run_lock

    if os.environ.get("LOCAL_RANK", "0") != "0":
        return run_stage(args)
    with run_lock(Path(args.run_dir), wait=args.wait):
        return run_stage(args)


def run_stage(args: argparse.Namespace) -> int:
    from sami.config import load_config
    from sami.constitutions import ConstitutionSet
    from sami.errors import SamiInputError
    from sami.layout import RunLayout
    from sami.pipeline import iteration_seed, train_from_config, train_queries

    layout = RunLayout(Path(args.run_dir))
    config = load_config(layout.config)
    t = args.iteration
    if not 1 <= t <= config.iterations.count:
        raise SamiInputError(f"--iteration: expected 1..{config.iterations.count}, got {t}")
    if args.stage == "generate":
        from sami.distributed import generate_samples_distributed

        cset = ConstitutionSet.load(layout.constitutions)
        policy = args.policy or layout.policy(t - 1, config.model.policy)
        generate_samples_distributed(
            config,
            policy=policy,
            queries=train_queries(config, t),
            cset=cset,
            out_path=layout.samples(t),
            seed=iteration_seed(config, t),
            progress=not args.no_progress,
        )
        return 0
    train_from_config(
        config,
        model_ref=args.model or config.model.policy,
        samples_path=layout.samples(t),
        output_dir=Path(args.output_dir) if args.output_dir else layout.train_partial(t),
        max_steps=args.max_steps or config.iterations.steps[t - 1],
    )
    return 0
