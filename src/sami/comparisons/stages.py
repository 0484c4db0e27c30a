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
They are records of the run's stage table (`sami.stages`), built with the same two patterns as SAMI's own stages
(`sami.stage_runs.checkpoint_stage`, `evaluation_stages`): skipped once done with the same hash, rerun in place
when it changed, resumed when interrupted. The comparison trains in a process of its own (never under accelerate).
"""

from __future__ import annotations

from sami.comparisons.dpo import train_dpo_from_config
from sami.comparisons.sft import train_sft_from_config
from sami.evaluation.settings import BaselineSettings
from sami.io import JsonlStore, read_jsonl
from sami.layout import RunLayout
from sami.run_config import RunConfig
from sami.stage import Stage, StageContext
from sami.stage_parts import StageParts
from sami.stage_runs import EvalTarget, checkpoint_stage, evaluation_stages, start_model

SAMI_BASELINE = "sami"
METHODS = ("dpo", "sft")
TRAINERS = {"dpo": train_dpo_from_config, "sft": train_sft_from_config}


def comparison_methods(config: RunConfig) -> list[str]:
    """The comparison methods a run config asks for, in the order they run (dpo, then sft)."""
    comparisons = config.comparisons
    return [m for m in METHODS if comparisons is not None and getattr(comparisons, m) is not None]


def seed_sami_responses(layout: RunLayout, t: int, method: str) -> None:
    """Copy π_T's evaluated responses (iter-T/eval, model side) into the comparison's responses.jsonl as the
    baseline "sami", so the evaluation judges against them instead of generating them again."""
    ours = JsonlStore(layout.comparison_eval(t, method).responses)
    for rec in read_jsonl(layout.eval(t).responses):
        if rec.get("side") == "model" and f"{SAMI_BASELINE}:{rec['query_id']}" not in ours:
            ours.add({**rec, "id": f"{SAMI_BASELINE}:{rec['query_id']}", "side": SAMI_BASELINE})
    ours.flush()


def comparison_stages(
    parts: StageParts, config: RunConfig, t: int, method: str, *, samples: str, reads: tuple[str, ...]
) -> list[Stage]:
    """iter-T/METHOD/train (on the stage `samples`) and the evaluation of its model, exactly as π_T's with π_T as
    one more baseline; its responses read `reads` (the constitutions, π_T's and π_0's responses) too."""

    def train(ctx: StageContext, output_dir) -> None:
        c = ctx.config
        TRAINERS[method](
            c, model_ref=start_model(c, ctx.layout, t), samples_path=ctx.layout.samples(t), output_dir=output_dir,
            max_steps=c.iterations.steps[t - 1],
        )  # fmt: skip

    trained = checkpoint_stage(
        f"iter-{t}/{method}/train", parts.comparison(t, method), (samples,),
        final=lambda layout: layout.comparison_train(t, method),
        partial=lambda layout: layout.comparison_train_partial(t, method), train=train, where="process",
    )  # fmt: skip
    target = EvalTarget(
        prefix=f"iter-{t}/{method}",
        t=t,
        label=f"iter-{t}-{method}",
        files=lambda layout: layout.comparison_eval(t, method),
        model=lambda ctx: str(ctx.layout.comparison_train(t, method)),
        extra_baselines=lambda ctx: {
            SAMI_BASELINE: BaselineSettings(model=ctx.layout.policy(t, ctx.config.model.policy),
                                            style=ctx.config.prompts.style)
        },
        prepare=lambda ctx: seed_sami_responses(ctx.layout, t, method),
        baseline_evals=lambda layout: {SAMI_BASELINE: layout.eval(t).root},
        reads=(trained.name, *reads),
    )  # fmt: skip
    return [trained, *evaluation_stages(parts, config, target, judged=True)]
