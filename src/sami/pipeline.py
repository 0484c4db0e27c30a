"""The iterative SAMI driver: runs (or resumes) the stage table of a run (`sami.stages`), recorded in
`manifest.json`.

Each stage is keyed in the manifest by the hash of the config parts it depends on and of the stages it reads
(`sami.stages.stage_keys`). A stage runs when it never finished, when its hash changed (then it clears what it
wrote before and reruns in place), when its outputs are missing, or when a stage it reads reruns; otherwise it is
skipped. So changing only `evaluation.judge` reruns judgments, metrics and the report, and keeps samples,
checkpoints and responses. `plan_stages` says what a run would do without doing it (`sami run --dry-run`).

Where a stage runs (`launcher.isolation`): every stage that loads a model runs in a child process of its own
(`sami stage NAME`, or `accelerate launch` of it), so the driver never holds a model or accelerator memory between
stages; with `isolation: driver` those stages run in this process instead (what `auto` does on a machine without a
GPU, where a process per stage only costs start-up time: `benchmarks/RESULTS.md`). The manifest records the pid
each stage ran under.

A stage that was interrupted resumes: generation and evaluation skip ids already written, training continues from
the last resume checkpoint in `train.partial/` (every `training.save_steps` optimizer steps) and renames the folder
when done.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import torch
from rich.console import Console

from sami import stages  # the module, so that a test can add a stage to its table in one place
from sami.io import atomic_write_text, read_text
from sami.launch import run_launched, run_stage
from sami.layout import RunLayout
from sami.manifest import Manifest, StageKey, StageStatus
from sami.models import check_attention
from sami.report import summary_table
from sami.run_config import RunConfig, config_to_yaml
from sami.stage import Stage, StageContext, Where
from sami.stage_parts import config_hash

log = logging.getLogger(__name__)


def plan_stages(config: RunConfig, run_dir: Path) -> dict[str, StageStatus]:
    """What `sami run` would do in `run_dir` (stage name -> run or skip, and why), reading only: nothing is
    written. Raises `SamiInputError` where the run would (an old manifest of another config)."""
    return Manifest(
        Path(run_dir), config_hash(config), stages.stage_keys(config), write=False, legacy_keys=legacy(config)
    ).plan


def legacy(config: RunConfig) -> dict[str, StageKey]:
    """The stage keys manifests of version 2 recorded (without input file contents)."""
    return stages.stage_keys(config, contents=False)


def isolated(config: RunConfig) -> bool:
    """Whether stages that load a model run in child processes (`launcher.isolation`; `auto`: when a GPU is
    visible or the launcher is accelerate)."""
    mode = config.launcher.isolation
    if mode != "auto":
        return mode == "process"
    if config.launcher.kind == "accelerate":
        return True

    return torch.cuda.is_available()


def child_args(run_dir: Path, name: str) -> list[str]:
    """The `sami` arguments of a child process running stage `name` of `run_dir` (as `sami run` launches it)."""
    return ["stage", name, "--run-dir", str(run_dir), "--part-of-run"]


def release_memory() -> None:
    """Let go of what a stage run in this process left (models, cached accelerator memory)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class Pipeline:
    """Runs (or resumes) one SAMI experiment described by a `RunConfig` into `run_dir`."""

    def __init__(self, config: RunConfig, run_dir: Path | None = None, *, console: Console | None = None):
        self.config = config
        self.run_dir = Path(run_dir or config.resolved_output_dir())
        self.layout = RunLayout(self.run_dir)
        self.console = console or Console(stderr=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.table = stages.stage_table(config)
        keys = stages.keys_of(self.table)  # one read of the input files' contents, not two
        self.manifest = Manifest(self.run_dir, config_hash(config), keys, legacy_keys=legacy(config))
        atomic_write_text(self.layout.config, config_to_yaml(config))
        self.isolated = isolated(config)

    def context(self) -> StageContext:
        return StageContext(self.config, self.layout, self.console, manifest=self.manifest)

    def where(self, stage: Stage) -> Where:
        """Where `stage` runs in this run: `driver` for a model stage unless stages are isolated."""
        if stage.where == "process" and not self.isolated:
            return "driver"
        return stage.where

    def run_stage(self, stage: Stage) -> bool:
        """Run `stage` when the manifest says it must (clear, work, after, record); False when it was skipped."""
        name = stage.name
        status = self.manifest.status(name)
        if not status.run:
            self.console.print(f"[dim]✓ {name} (done)[/dim]")
            return False
        self.console.rule(f"[bold]{name}[/bold] [dim]({status.reason})[/dim]")
        self.manifest.start(name, in_place=status.in_place)
        started = time.perf_counter()
        ctx = self.context()
        if status.in_place:
            stage.clear(ctx)
        where = self.where(stage)
        if where == "driver":
            try:
                stage.run(ctx)
            finally:
                release_memory()
            pid = os.getpid()
        elif where == "accelerate":
            pid = run_stage(self.config.launcher, child_args(self.run_dir, name), what=name)
        else:
            pid = run_launched([sys.executable, "-m", "sami.cli", *child_args(self.run_dir, name)], what=name)
        info = stage.after(ctx) or {}
        seconds = round(time.perf_counter() - started, 1)  # wall time of the stage, start-up of its process included
        self.manifest.finish(name, stage.outputs(ctx), pid=pid, where=where, seconds=seconds, **info)
        return True

    def run_named(self, *names: str) -> None:
        """Run (or skip) the named stages of the table, in the order given."""
        for name in names:
            self.run_stage(self.table[name])

    def report_summary(self) -> dict:
        return json.loads(read_text(self.layout.report / "summary.json"))

    def run(self) -> Path:
        # FlexAttention trains only on an accelerator: stop before iteration 0, not at the first training stage
        check_attention(self.config.model.attn_implementation, backward=True)
        random.seed(self.config.seed)
        for stage in self.table.values():
            self.run_stage(stage)
        summary = self.report_summary()
        index = self.layout.report / "index.html"
        self.console.print(summary_table(summary))
        self.console.print(f"report: {index}")
        return index
