"""`sami stage NAME`: one stage of a run folder, as `sami run` starts it in a process of its own (or under
`accelerate launch`).

```
sami stage iter-1/responses --run-dir runs/x
accelerate launch --num_processes 8 --config_file fsdp.yaml -m sami.cli stage iter-1/train --run-dir runs/x
sami stage --list --run-dir runs/x
```
NAME is any stage of the run's table (`sami.stages`; `--list` prints them); `generate` and `train` with
`--iteration T` are the older names of `iter-T/samples` and `iter-T/train`. The run folder's `config.yaml` and
`constitutions.json` describe the stage; every process reads them. The stage's work runs here; its bookkeeping
(the manifest, renaming `train.partial/`) is the driver's: rerun `sami run`, which skips what is done and resumes a
training stage from the checkpoints this one left.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console

from sami import stages
from sami.errors import SamiInputError
from sami.layout import RunLayout
from sami.run_config import load_config
from sami.runlock import run_lock
from sami.stage import StageContext

ALIASES = {"generate": "samples", "train": "train"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", nargs="?", help="the stage, e.g. iter-1/train (`--list` prints them)")
    parser.add_argument("--run-dir", required=True, help="the run folder (holds config.yaml, constitutions.json)")
    parser.add_argument("--list", action="store_true", help="print the run's stages, in run order, and exit")
    parser.add_argument("--iteration", type=int, help="with the older names generate / train: iteration t >= 1")
    parser.add_argument("--policy", help="iter-T/samples: the model that writes the samples (default: π_{T-1})")
    parser.add_argument("--model", help="iter-T/train: the starting model (default: the run's)")
    parser.add_argument("--output-dir", help="iter-T/train: checkpoint folder (default: iter-T/train.partial)")
    parser.add_argument("--max-steps", type=int, help="iter-T/train: optimizer steps (default: iterations.steps)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--wait", action="store_true", help="wait for another sami writing the folder to finish")
    parser.add_argument("--part-of-run", action="store_true", help=argparse.SUPPRESS)  # started by `sami run`


def stage_name(args: argparse.Namespace, count: int) -> str:
    """The table name of the stage asked for (the older `generate` / `train --iteration T` included)."""
    if args.stage in ALIASES:
        t = args.iteration
        if t is None or not 1 <= t <= count:
            raise SamiInputError(f"--iteration: expected 1..{count} with `sami stage {args.stage}`, got {t}")
        return f"iter-{t}/{ALIASES[args.stage]}"
    if not args.stage:
        raise SamiInputError("name the stage to run (e.g. iter-1/train), or pass --list")
    return args.stage


def run(args: argparse.Namespace) -> int:
    """Under the run folder's lock (the launching `sami run`'s own, when it launched this process; under a bare
    `accelerate launch`, each machine's local rank 0 holds it for the others)."""
    layout = RunLayout(Path(args.run_dir))
    if args.list:
        print("\n".join(stages.stage_table(load_config(layout.config), contents=False)))
        return 0
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return run_stage(args, layout)
    with run_lock(layout.root, wait=args.wait):
        return run_stage(args, layout)


def run_stage(args: argparse.Namespace, layout: RunLayout) -> int:
    """Run the stage's work in this process (every rank, under accelerate)."""
    config = load_config(layout.config)
    stage = stages.find_stage(config, stage_name(args, config.iterations.count))
    options = {
        "policy": args.policy,
        "model": args.model,
        "output_dir": args.output_dir,
        "max_steps": args.max_steps,
        "no_progress": args.no_progress,
    }
    stage.run(StageContext(config, layout, Console(stderr=True), options={k: v for k, v in options.items() if v}))
    return 0
