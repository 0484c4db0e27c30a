"""The comparison stages of a run: at iteration T, a DPO and/or an SFT model trained and evaluated beside π_T.

```
iter-T/M/train      method M (dpo, sft; TRL) from SAMI's starting model of iteration T, on iter-T/samples.jsonl, for
                    the same optimizer steps unless comparisons.M.max_steps says otherwise (train.partial, renamed)
iter-T/M/responses, iter-T/M/judgments, iter-T/M/metrics
                    the evaluation of π_T (iter-T/responses ...), for the M model, into iter-T/M/eval/:
                    responses, MI, lengths, adherence, win rates vs base; plus judgments-sami.jsonl, the M model
                    (model side) head to head against π_T (baseline "sami", its responses those of
                    iter-T/eval/responses.jsonl)
```
Each is a manifest stage keyed like SAMI's (`sami.pipeline.stage_keys`): skipped once done with the same hash,
rerun in place when it changed; an interrupted one resumes like SAMI's.
The comparison trains in the pipeline's process (also under `launcher.kind: accelerate`).
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from sami.io import JsonlStore, read_jsonl

if TYPE_CHECKING:
    from sami.constitutions import ConstitutionSet
    from sami.pipeline import Pipeline

SAMI_BASELINE = "sami"
METHODS = ("dpo", "sft")


def comparison_methods(config) -> list[str]:
    """The comparison methods a run config asks for, in the order they run (dpo, then sft)."""
    comparisons = config.comparisons
    return [m for m in METHODS if comparisons is not None and getattr(comparisons, m) is not None]


def run_comparisons(pipeline: Pipeline, t: int, cset: ConstitutionSet) -> None:
    """Train and evaluate every comparison the run config asks for at iteration t (none by default)."""
    for method in comparison_methods(pipeline.config):
        train_comparison_stage(pipeline, t, method)
        evaluate_comparison(pipeline, t, cset, method)


def train_comparison_stage(pipeline: Pipeline, t: int, method: str) -> None:
    """The stage iter-T/METHOD/train: train in train.partial (resumable), then rename it to train."""
    from sami.comparisons.dpo import train_dpo_from_config
    from sami.comparisons.sft import train_sft_from_config

    name = f"iter-{t}/{method}/train"
    status = pipeline._stage(name)
    if not status:
        return
    config, layout = pipeline.config, pipeline.layout
    final = layout.comparison_train(t, method)
    partial = layout.comparison_train_partial(t, method)
    if status.in_place:  # resume checkpoints of another config
        shutil.rmtree(partial, ignore_errors=True)
    train = {"dpo": train_dpo_from_config, "sft": train_sft_from_config}[method]
    train(
        config,
        model_ref=pipeline.start_model(t),
        samples_path=layout.samples(t),
        output_dir=partial,
        max_steps=config.iterations.steps[t - 1],
    )
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    pipeline.manifest.finish(name, [final])


def seed_sami_responses(pipeline: Pipeline, t: int, method: str) -> None:
    """Copy π_T's evaluated responses (iter-T/eval, model side) into the comparison's responses.jsonl as the
    baseline "sami", so the evaluation judges against them instead of generating them again."""
    layout = pipeline.layout
    ours = JsonlStore(layout.comparison_eval(t, method).responses)
    for rec in read_jsonl(layout.eval(t).responses):
        if rec.get("side") == "model" and f"{SAMI_BASELINE}:{rec['query_id']}" not in ours:
            ours.add({**rec, "id": f"{SAMI_BASELINE}:{rec['query_id']}", "side": SAMI_BASELINE})
    ours.flush()


def evaluate_comparison(pipeline: Pipeline, t: int, cset: ConstitutionSet, method: str) -> None:
    """Evaluate the comparison model of iteration t exactly as π_T (`Pipeline.evaluate`), with π_T as one more
    baseline ("sami"): the stages iter-T/METHOD/responses, judgments and metrics."""
    from sami.evaluation.evaluate import BaselineSettings
    from sami.stage_settings import evaluation_baselines

    config, layout = pipeline.config, pipeline.layout
    sami = BaselineSettings(model=pipeline.checkpoint(t), style=config.prompts.style)
    pipeline.evaluation_stages(
        f"iter-{t}/{method}",
        layout.comparison_eval(t, method),
        cset,
        model_ref=str(layout.comparison_train(t, method)),
        model_label=f"iter-{t}-{method}",
        baselines={**evaluation_baselines(config, against_base=True), SAMI_BASELINE: sami},
        contrast=False,
        prepare=lambda: seed_sami_responses(pipeline, t, method),
        baseline_evals={SAMI_BASELINE: layout.eval(t).root},
    )
