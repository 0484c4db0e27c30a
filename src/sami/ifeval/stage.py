"""IFEval as an optional evaluation stage of a run (`evaluation.benchmarks: [ifeval]`).

Per evaluated iteration t, stage `iter-t/benchmarks` scores π_t on the first `evaluation.ifeval_limit` IFEval
prompts (greedy, chat template, `evaluation.ifeval_max_new_tokens`) into `iter-t/eval/ifeval/` (the files of
`sami benchmark ifeval`); the report reads `results.json` from there. A run without benchmarks has no such stage
and keeps its config hash.
"""

from __future__ import annotations

import shutil
from typing import Any

from sami.ifeval.benchmark import IFEvalSettings, run_ifeval

BENCHMARK_FIELDS = ("benchmarks", "ifeval_limit", "ifeval_max_new_tokens")


def stage_parts(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """The config parts the benchmark stage depends on (None: no benchmark stage)."""
    if not evaluation.get("benchmarks"):
        return None
    return {f"evaluation.{k}": evaluation.get(k) for k in BENCHMARK_FIELDS}


def drop_defaults(dumped: dict[str, Any]) -> None:
    """Remove the benchmark fields from a dumped config when no benchmark runs (the hash of older runs holds)."""
    ev = dumped.get("evaluation")
    if isinstance(ev, dict) and not ev.get("benchmarks"):
        for k in BENCHMARK_FIELDS:
            ev.pop(k, None)


def run_benchmarks(pipeline, t: int) -> None:
    """Stage `iter-t/benchmarks` of a `sami.pipeline.Pipeline` (skipped when done or not configured)."""
    ev = pipeline.config.evaluation
    name = f"iter-{t}/benchmarks"
    if not ev.benchmarks:
        return
    status = pipeline._stage(name)
    if not status:
        return
    out = pipeline.layout.eval(t).root / "ifeval"
    if status.in_place:  # responses of other benchmark settings
        shutil.rmtree(out, ignore_errors=True)
    settings = IFEvalSettings(
        out=str(out),
        model=pipeline.checkpoint(t),
        limit=ev.ifeval_limit,
        max_new_tokens=ev.ifeval_max_new_tokens,
        batch_size=ev.batch_size,
        dtype=ev.dtype or pipeline.config.model.dtype,
    )
    results = run_ifeval(settings)
    pipeline.console.print(
        f"IFEval iter-{t} ({results['num_prompts']} prompts): prompt-level strict "
        f"{results['prompt_level_strict_acc']:.3f} ± {results['prompt_level_strict_acc_stderr'] or 0:.3f}, "
        f"instruction-level strict {results['inst_level_strict_acc']:.3f}, loose "
        f"{results['prompt_level_loose_acc']:.3f} / {results['inst_level_loose_acc']:.3f}"
    )
    pipeline.manifest.finish(name, [out / "results.json"])
