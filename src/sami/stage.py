"""One stage of a run, as a declared record, and what its functions are given.

A `Stage` says everything the runner (`sami.pipeline`) and `sami stage NAME` need: its name, the config parts its
hash reads and the stages it reads (`sami.manifest.StageKey`), what it writes, where it runs and the functions that
do the work. The records are made by `sami.stages.stage_table` from the run config; nothing else spells a stage's
name.

```
clear(ctx)   the driver, before a rerun over outputs of another config ("in place")
run(ctx)     the work: in the driver, in a child `sami stage NAME` process, or under `accelerate launch` of it
after(ctx)   the driver, once the work is done: checks, renames, extra manifest fields (e.g. {"failures": 3})
outputs(ctx) the files the manifest records (their sizes, mtimes and digests)
```
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from sami.layout import RunLayout
from sami.manifest import Manifest
from sami.run_config import RunConfig

Where = Literal["driver", "process", "accelerate"]


@dataclass
class StageContext:
    """What a stage's functions read: the run config, the run folder's layout and the console. `manifest` only in
    the driver (None in a child process); `options`: `sami stage` flags that override a stage's defaults (the
    starting model, the output folder, the optimizer steps)."""

    config: RunConfig
    layout: RunLayout
    console: Console
    manifest: Manifest | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.layout.root


def _nothing(ctx: StageContext) -> None:
    return None


@dataclass(frozen=True)
class Stage:
    """One stage of a run. `where`: `driver` (no model: it runs in `sami run`'s own process), `process` (it loads a
    model: a child process unless `launcher.isolation` keeps it in the driver) or `accelerate` (`accelerate launch`
    of the child, every rank running `run`)."""

    name: str
    parts: dict[str, Any]
    upstream: tuple[str, ...]
    run: Callable[[StageContext], None]
    outputs: Callable[[StageContext], list[Path]]
    where: Where = "driver"
    clear: Callable[[StageContext], None] = _nothing
    after: Callable[[StageContext], dict[str, Any] | None] = _nothing
