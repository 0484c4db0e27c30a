"""`sami run [CONFIG]`: the whole iterative SAMI experiment (the CPU demo when no config is given).

`--dry-run` prints, per stage, whether a run would run or skip it and why, and writes nothing (with `--devices
8xH100-80GB` also `sami plan`'s memory and time per stage); `--restart` empties the output folder (only its
contents) and starts over, and only in a run folder (one holding a sami manifest) or an empty one: any other folder
is refused. One `sami run` writes a folder at a time (`sami.runlock`): a second is refused naming the first's pid,
or with `--wait` waits for it. A run that recorded failures (failed judge requests) exits 1 after one summary line;
rerunning retries only what failed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from sami import stages
from sami.errors import SamiInputError
from sami.manifest import is_run_folder
from sami.pipeline import Pipeline, plan_stages
from sami.plan import PlanSettings
from sami.plan_report import format_plan, unfit_lines
from sami.plan_run import plan_run
from sami.preflight import check_run
from sami.run_config import load_config
from sami.runlock import LOCK_NAME, check_run_folder, run_lock


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="run config (YAML); default: the bundled CPU demo")
    parser.add_argument("--output-dir", help="where to write the run (default: runs/NAME from the config)")
    parser.add_argument("--restart", action="store_true", help="delete what the output folder holds and start over")
    parser.add_argument("--dry-run", action="store_true", help="print which stages would run and why; write nothing")
    parser.add_argument("--wait", action="store_true", help="wait for another sami writing the folder to finish")
    parser.add_argument(
        "--devices",
        help="with --dry-run: also print `sami plan`'s memory and time per stage on these devices, e.g. 8xH100-80GB",
    )


def empty_folder(folder: Path) -> None:
    """Delete what `folder` holds (not the folder itself nor its lock; links are removed, never followed). Refused
    (`SamiInputError`) unless the folder holds a sami manifest or nothing."""
    check_restartable(folder)
    for child in folder.iterdir():
        if child.name == LOCK_NAME:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def check_restartable(folder: Path) -> None:
    """Refuse to empty a folder that is not a sami run folder (a manifest.json of ours) and not empty."""
    held = [c for c in folder.iterdir() if c.name != LOCK_NAME]
    if held and not is_run_folder(folder):
        raise SamiInputError(
            f"{folder}: --restart empties only a sami run folder (one holding manifest.json) or an empty folder; "
            f"this one holds {len(held)} other entries (e.g. {sorted(c.name for c in held)[0]!r})"
        )


def dry_run(config, run_dir: Path, *, restart: bool, devices: str | None = None) -> None:
    """Print one line per stage: `run` or `skip`, the stage and why; with `devices`, then `sami plan`'s memory and
    time plan on them."""
    if restart:
        # only the stage names: no input file is read for their contents
        names = stages.stage_keys(config, contents=False)
        plan = {name: ("run", "restart: the folder is emptied first") for name in names}
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

    config = load_config(args.config)
    run_dir = Path(args.output_dir) if args.output_dir else config.resolved_output_dir()
    check_run_folder(run_dir)
    if args.restart and run_dir.is_dir():
        check_restartable(run_dir)
    check_run(config)
    if args.dry_run:
        dry_run(config, run_dir, restart=args.restart, devices=args.devices)
        return 0
    with run_lock(run_dir, wait=args.wait):
        if args.restart:
            empty_folder(run_dir)
        pipeline = Pipeline(config, run_dir)
        pipeline.run()
    incomplete = pipeline.manifest.incomplete()
    if incomplete:
        said = "; ".join(f"{name}: {why}" for name, why in incomplete.items())
        print(
            f"sami run: incomplete: {said}; the numbers that depend on them are not final, rerun to retry",
            file=sys.stderr,
        )
        return 1
    return 0
