"""`sami run --dry-run`: what a run would do in its folder, stage by stage, and on stated devices `sami plan`'s memory
and time plan; nothing is written."""

from __future__ import annotations

from pathlib import Path

from sami import stages
from sami.errors import SamiInputError
from sami.pipeline import plan_stages
from sami.plan import PlanSettings
from sami.plan_report import format_plan, unfit_lines
from sami.plan_run import plan_run
from sami.run_config import RunConfig


def dry_run(config: RunConfig, run_dir: Path, *, restart: bool, devices: str | None = None) -> None:
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


def print_resource_plan(config: RunConfig, devices: str) -> None:
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
