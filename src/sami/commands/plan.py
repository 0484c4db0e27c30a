"""`sami plan [CONFIG] [--devices 8xH100-80GB]`: memory per device and time of every stage, before anything runs.

Reads the config and the models' config.json (a local folder, the hub cache or the bundled table), never weights.
Exit 0 when every stage fits the devices, 1 when one does not (one line per stage on stderr), 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys

from sami.cli_settings import add_settings_arguments, load_settings, read_yaml, settings_overrides
from sami.plan import PlanSettings
from sami.plan_report import format_plan, unfit_lines
from sami.plan_run import plan_run
from sami.run_config import default_config_path, parse_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="run config (YAML); default: the bundled CPU demo")
    add_settings_arguments(parser, PlanSettings, key="plan")


def run(args: argparse.Namespace) -> int:

    path = args.config or str(default_config_path())
    config = parse_config(read_yaml(path), source=path)  # no data-file checks: planning needs none
    settings = load_settings(PlanSettings, overrides=settings_overrides(args, "plan"))
    plan = plan_run(config, settings, source=path)
    print(format_plan(plan))
    for line in unfit_lines(plan):
        print(f"sami plan: {line}", file=sys.stderr)
    return 0 if plan.fits else 1
