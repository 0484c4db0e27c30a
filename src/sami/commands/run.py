"""`sami run [CONFIG]`: the whole iterative SAMI experiment (the CPU demo when no config is given).

`--dry-run` prints, per stage, whether a run would run or skip it and why, and writes nothing (with `--devices
8xH100-80GB` also `sami plan`'s memory and time per stage); `--restart` empties
the output folder (only its contents) and starts over.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="run config (YAML); default: the bundled CPU demo")
    parser.add_argument("--output-dir", help="where to write the run (default: runs/NAME from the config)")
    parser.add_argument("--restart", action="store_true", help="delete what the output folder holds and start over")
    parser.add_argument("--dry-run", action="store_true", help="print which stages would run and why; write nothing")
    parser.add_argument(
        "--devices",
        help="with --dry-run: also print `sami plan`'s memory and time per stage on these devices, e.g. 8xH100-80GB",
    )


def empty_folder(folder: Path) -> None:
    """Delete what `folder` holds (not the folder itself; links are removed, never followed)."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def dry_run(config, run_dir: Path, *, restart: bool, devices: str | None = None) -> None:
    """Print one line per stage: `run` or `skip`, the stage and why; with `devices`, then `sami plan`'s memory and
    time plan on them."""
    from sami.pipeline import plan_stages, stage_keys

    if restart:
        plan = {name: ("run", "restart: the folder is emptied first") for name in stage_keys(config)}
    else:
        plan = {name: ("run" if s.run else "skip", s.reason) for name, s in plan_stages(config, run_dir).items()}
    width = max(len(name) for name in plan)
    for name, (verdict, reason) in plan.items():
        print(f"{verdict:<4}  {name:<{width}}  {reason}")
    if devices:
        print_resource_plan(config, devices)


def print_resource_plan(config, devices: str) -> None:
    """The memory and time plan of `sami plan` (sami.plan_run), after the stage table; a model whose config cannot
    be found offline is named instead."""
    from sami.errors import SamiInputError
    from sami.plan import PlanSettings
    from sami.plan_report import format_plan, unfit_lines
    from sami.plan_run import plan_run

    print()
    try:
        plan = plan_run(config, PlanSettings(devices=devices), source="this config")
    except SamiInputError as e:
        print(f"resource plan unavailable: {e}")
        return
    print(format_plan(plan))
    for line in unfit_lines(plan):
        print(f"does not fit: {line}")


def run(args: argparse.Namespace) -> int:
    from sami.config import load_config
    from sami.pipeline import Pipeline

    config = load_config(args.config)
    run_dir = Path(args.output_dir) if args.output_dir else config.resolved_output_dir()
    if args.dry_run:
        dry_run(config, run_dir, restart=args.restart, devices=args.devices)
        return 0
    if args.restart and run_dir.is_dir():
        empty_folder(run_dir)
    Pipeline(config, run_dir).run()
    return 0
