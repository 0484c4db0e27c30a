"""`sami run [CONFIG]`: the whole iterative SAMI experiment (the CPU demo when no config is given)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="run config (YAML); default: the bundled CPU demo")
    parser.add_argument("--output-dir", help="where to write the run (default: runs/NAME from the config)")
    parser.add_argument("--restart", action="store_true", help="delete what the output folder holds and start over")


def run(args: argparse.Namespace) -> int:
    from sami.config import load_config
    from sami.pipeline import Pipeline

    config = load_config(args.config)
    run_dir = Path(args.output_dir) if args.output_dir else config.resolved_output_dir()
    if args.restart and run_dir.exists():
        shutil.rmtree(run_dir)
    Pipeline(config, run_dir).run()
    return 0
