"""The local files a run's stages read, grouped by who reads them, with their content digests (`sami.contents`).

```
constitutions   the constitution file (or bundled set), or the writer's model folder
policy          π_0's model folder or GGUF file (self-generation of iteration 1, training, evaluation)
train_data      the training query files          eval_data   the evaluation query files
baseline:NAME   baseline NAME's model folder      judge       the local judge's model folder
```
`stage_keys` adds a group's `file:PATH` parts to the key of each stage that reads it, so editing one file reruns
exactly those stages (and the ones reading theirs).
"""

from __future__ import annotations

from typing import Any

from sami.constitutions import BUNDLED_CONSTITUTIONS, bundled_constitution_path
from sami.contents import file_parts
from sami.data import QuerySource, bundled_queries_path
from sami.evaluation.settings import as_baseline


def _sources(sources: list[QuerySource]) -> list[Any]:
    paths: list[Any] = []
    for src in sources:
        paths += [src.path, src.dataset]
        if src.bundled:
            paths.append(bundled_queries_path(src.bundled))
    return paths


def input_groups(config) -> dict[str, dict[str, str]]:
    """Group name -> {"file:PATH": digest} for a `RunConfig`'s local input files (hub ids and 'default' are
    names, not files: their config values key them)."""
    constitutions: list[Any]
    if config.writer is not None:
        constitutions = [config.writer.model]
    elif config.constitutions in BUNDLED_CONSTITUTIONS:
        constitutions = [config.constitutions, bundled_constitution_path(config.constitutions)]
    else:
        constitutions = [config.constitutions]
    judge = config.evaluation.judge
    return {
        "constitutions": file_parts(constitutions),
        "policy": file_parts([config.model.policy]),
        "train_data": file_parts(_sources(config.data.train)),
        "eval_data": file_parts(_sources(config.data.eval)),
        "judge": file_parts([judge.model] if judge.kind == "local" else []),
    } | {f"baseline:{name}": file_parts([as_baseline(b).model]) for name, b in config.evaluation.baselines.items()}
