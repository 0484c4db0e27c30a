"""IFEval as an optional evaluation stage of a run (`evaluation.benchmarks: [ifeval]`).

Per evaluated iteration t, stage `iter-t/benchmarks` scores π_t on the first `evaluation.ifeval_limit` IFEval
prompts (greedy, chat template, `evaluation.ifeval_max_new_tokens`) into `iter-t/eval/ifeval/` (the files of
`sami benchmark ifeval`); the report reads `results.json` from there. A run without benchmarks has no such stage
and keeps its config hash.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from sami.ifeval.benchmark import IFEvalSettings, run_ifeval
from sami.stage import Stage, StageContext

BENCHMARK_FIELDS = ("benchmarks", "ifeval_limit", "ifeval_max_new_tokens")


def drop_defaults(dumped: dict[str, Any]) -> None:
    """Remove the benchmark fields from a dumped config when no benchmark runs (the hash of older runs holds)."""
    ev = dumped.get("evaluation")
    if isinstance(ev, dict) and not ev.get("benchmarks"):
        for k in BENCHMARK_FIELDS:
            ev.pop(k, None)


def benchmark_stage(parts: dict[str, Any], t: int, upstream: tuple[str, ...]) -> Stage:
    """Stage `iter-t/benchmarks` (`parts`: `sami.stage_parts.StageParts.benchmarks`): IFEval of π_t, after the
    stages `upstream` (π_t's training)."""
    name = f"iter-{t}/benchmarks"

    def out(ctx: StageContext) -> Path:
        return ctx.layout.eval(t).root / "ifeval"

    def clear(ctx: StageContext) -> None:  # responses of other benchmark settings
        shutil.rmtree(out(ctx), ignore_errors=True)

    def run(ctx: StageContext) -> None:
        c = ctx.config
        ev = c.evaluation
        settings = IFEvalSettings(
            out=str(out(ctx)),
            model=ctx.layout.policy(t, c.model.policy),
            limit=ev.ifeval_limit,
            max_new_tokens=ev.ifeval_max_new_tokens,
            batch_size=ev.batch_size,
            dtype=ev.dtype or c.model.dtype,
        )
        results = run_ifeval(settings)
        ctx.console.print(
            f"IFEval iter-{t} ({results['num_prompts']} prompts): prompt-level strict "
            f"{results['prompt_level_strict_acc']:.3f} ± {results['prompt_level_strict_acc_stderr'] or 0:.3f}, "
            f"instruction-level strict {results['inst_level_strict_acc']:.3f}, loose "
            f"{results['prompt_level_loose_acc']:.3f} / {results['inst_level_loose_acc']:.3f}"
        )

    return Stage(name, parts, upstream, run, lambda ctx: [out(ctx) / "results.json"], "process", clear)
