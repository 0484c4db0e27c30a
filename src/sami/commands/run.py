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

from sami.errors import SamiInputError
from sami.manifest import is_run_folder
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


def run(args: argparse.Namespace) -> int:
    # the stages load torch: imported here, not at the top, so that `sami run --help` answers at once
    from sami.dry_run import dry_run
    from sami.pipeline import Pipeline
    from sami.preflight import check_run

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
