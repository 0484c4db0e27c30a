"""The stage table of a run: every stage declared once, in run order, as a `sami.stage.Stage` record.

```
constitutions                    load (or write) the principles
baselines/NAME                   each of evaluation.baselines: its responses (and MI scores), once per run
iter-0/responses                 the base model's evaluated responses and scores (MI, lengths, contrast check)
iter-0/judgments                 judged against evaluation.baselines (only when there are any; reads baselines/*)
iter-0/metrics                   metrics.json, from the files above (no model)
iter-0/benchmarks                IFEval of the base model (only with evaluation.benchmarks)
for t in 1..T:
    iter-t/samples               self-generate with π_{t-1} on this iteration's query slice
    iter-t/train                 train from π_0 (or π_{t-1}) for steps[t-1] optimizer steps
    iter-t/responses             π_t's evaluated responses and scores
    iter-t/judgments             π_t against the base model (iteration 0's responses) and baselines/* (the judge only)
    iter-t/metrics               metrics.json
    iter-t/benchmarks            IFEval of π_t (only with evaluation.benchmarks)
    iter-t/<method>/...          comparisons (sami.comparisons.stages)
report
```
From this table come the manifest's keys (`stage_keys`), `sami run --dry-run`, the runner (`sami.pipeline`) and
`sami stage NAME`. To add a stage, add its record here (its work in a module of its own): nothing else names it.
"""

from __future__ import annotations

from sami.comparisons.stages import comparison_methods, comparison_stages
from sami.errors import SamiInputError
from sami.ifeval.stage import benchmark_stage
from sami.manifest import StageKey
from sami.run_config import RunConfig
from sami.stage import Stage
from sami.stage_parts import StageParts, config_hash
from sami.stage_runs import (
    baseline_stage,
    constitutions_stage,
    evaluation_stages,
    policy_target,
    report_stage,
    samples_stage,
    train_stage,
)


def stage_table(config: RunConfig, *, contents: bool = True) -> dict[str, Stage]:
    """Every stage of a run, in run order, by name. `contents=False`: keys without the input files' contents (the
    keys of manifest version 2; reads no input file)."""
    parts = StageParts.of(config, contents=contents)
    constitutions = constitutions_stage(parts, config)
    stages: list[Stage] = [constitutions]
    stages += [baseline_stage(parts, name, (constitutions.name,)) for name in config.evaluation.baselines]

    def evaluation(t: int, trained: tuple[str, ...], reads: tuple[str, ...] = (), *, judged: bool) -> str:
        """π_t's evaluation stages (and its benchmark), after π_t's training stage `trained` and the stages `reads`;
        returns its responses stage's name."""
        evaluated = evaluation_stages(
            parts, config, policy_target(config, t, (constitutions.name, *trained, *reads)), judged=judged
        )
        stages.extend(evaluated)
        bench = parts.benchmarks(t)
        if bench is not None:  # IFEval reads π_t alone: another evaluation of the run does not rerun it
            stages.append(benchmark_stage(bench, t, trained))
        return evaluated[0].name

    base_responses = evaluation(0, (), judged=bool(config.evaluation.baselines))
    trained: tuple[str, ...] = ()  # π_{t-1}'s training stage (none for π_0)
    for t in range(1, config.iterations.count + 1):
        samples = samples_stage(parts, config, t, (constitutions.name, *trained))
        train = train_stage(parts, config, t, samples.name)
        stages += [samples, train]
        responses = evaluation(t, (train.name,), (base_responses,), judged=True)
        for method in comparison_methods(config):
            reads = (constitutions.name, responses, base_responses)
            stages += comparison_stages(parts, config, t, method, samples=samples.name, reads=reads)
        trained = (train.name,)
    stages.append(report_stage(config_hash(config), tuple(s.name for s in stages)))
    return {s.name: s for s in stages}


def stage_keys(config: RunConfig, *, contents: bool = True) -> dict[str, StageKey]:
    """Every stage's key (`sami.manifest.StageKey`), in run order: the hash of the config parts it reads, the
    contents of the files it reads and the keys of the stages it reads."""
    return keys_of(stage_table(config, contents=contents))


def keys_of(table: dict[str, Stage]) -> dict[str, StageKey]:
    """The keys of a stage table's records, in run order (upstream stages come first)."""
    keys: dict[str, StageKey] = {}
    for name, stage in table.items():
        keys[name] = StageKey.of(stage.parts, {u: keys[u] for u in stage.upstream})
    return keys


def find_stage(config: RunConfig, name: str) -> Stage:
    """The stage called `name` (one line naming the stages there are when there is none)."""
    table = stage_table(config, contents=False)
    if name not in table:
        raise SamiInputError(f"no stage {name!r} in this run; its stages: {', '.join(table)}")
    return table[name]
