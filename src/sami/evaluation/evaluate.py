"""The evaluation stage: responses, pairwise judgments against baselines, win rates, MI and lengths.

`run_evaluation(settings, model_ref, out_dir, inputs, steps=("responses", "judgments", "metrics"))` runs three
file-to-file steps (see docs/evaluation.md); the files of the output folder (`sami.layout.EvalLayout`):

- responses step (every generation and every model forward):
  - `responses.jsonl`: one greedy response per (side, query) under the query's positive constitution: `{"id":
    "<side>:<query_id>", "query_id", "side": "model" | "<baseline name>", "model", "query", "constitution",
    "response", "num_tokens", "separator", "ended_with_eos"}`.
  - `mi_responses.jsonl`: the evaluated model's greedy responses under the MI constitutions of each query (every
    sign pattern of the positive constitution, or the C training-style ones): `{"id", "query", "constitutions",
    "responses", "num_tokens", "separators", "ended_with_eos"}`; `mi_responses-<baseline>.jsonl` the same for an hf
    baseline.
  - `antithesis_responses.jsonl` (when principles carry checks): the response under each query's antithesis
    constitution (the positive one with every sign flipped), `{"id": query_id, "query_id", "query",
    "constitution", "response", "num_tokens", "reused"}`; `reused` when taken from a response already written
    under the same constitution.
  - `contrast_responses.jsonl` (with `contrast=True`, the pipeline's iteration 0): responses under the positive
    constitution with one principle flipped, `{"id": "<principle>:<query_id>", "principle", ...}`.
  - `scores.json`: the per-query intrinsic scores (`sami.evaluation.scores.ScoresFile`), so that the metrics step
    loads no model.
- judgments step: `judgments-<baseline>.jsonl`, one judgment per query (see `sami.evaluation.judges`), every
  record naming its judge (`JudgeSettings.identity()`); another judge's file is refused or moved aside.
- metrics step: `metrics.json` (`sami.run_files.Metrics`): `{"model", "n_queries", "n_constitutions", "mi_kind",
  "n_sign_patterns", "mi_sampled", "mi", "mi_bound", "mean_length" (characters), "mean_length_tokens",
  "win_rates": {baseline: summary}, "judge", "adherence" (see `sami.evaluation.adherence`), "contrast",
  "baselines", "subsets"}`.

Every file grows in chunks that are written atomically, and a rerun skips ids already there, so an interrupted
evaluation resumes where it stopped and judges each query exactly once. The constitutions of a query (and the
judge's order and principle shuffle) are drawn from RNGs seeded by the query id, so they do not depend on which
queries are still to do. `sami.stage_settings` gives a run's evaluation settings and baselines.

The parts: `settings` (EvaluationSettings, BaselineSettings), `context` (EvaluationInputs, the resolved
Evaluation), `responses_step`, `baselines`, `scores` (the owner of scores.json), `judgments`, `metrics_step`,
`templates` and `devices`. `run_baseline` writes one baseline's folder on its own (a run's `baselines/NAME/`
stage), which evaluations then name in `EvaluationInputs.baseline_dirs` instead of generating it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from sami.errors import SamiInputError
from sami.evaluation.baselines import baseline_responses
from sami.evaluation.console_tables import metrics_table
from sami.evaluation.context import EvaluationInputs, prepare
from sami.evaluation.judgments import judgments_step
from sami.evaluation.metrics_step import metrics_step
from sami.evaluation.responses import Progress
from sami.evaluation.responses_step import responses_step
from sami.evaluation.scores import ScoresFile
from sami.evaluation.settings import BaselineSettings, EvaluationSettings, as_baseline, eos_policy
from sami.generation import HFGeneration
from sami.io import JsonlStore
from sami.run_files import Scores

log = logging.getLogger(__name__)

STEPS = ("responses", "judgments", "metrics")


def run_evaluation(
    settings: EvaluationSettings,
    model_ref: str,
    out_dir: str | Path,
    inputs: EvaluationInputs | None = None,
    *,
    steps: Sequence[str] = STEPS,
    rejudge: bool = False,
    console: Console | None = None,
) -> dict | None:
    """Evaluate `model_ref` into `out_dir` in file-to-file `steps` (any of, run in this order):

    - "responses": every generation and every forward pass of the evaluated model: `responses.jsonl` (model and
      baselines), `mi_responses.jsonl`, `antithesis_responses.jsonl`, `contrast_responses.jsonl` and the per-query
      intrinsic scores `scores.json`. Resumable: what is on disk is kept, and with every file complete nothing is
      loaded or rewritten.
    - "judgments": `judgments-<baseline>.jsonl` (loads only the judge, and the tokenizer for the lengths).
    - "metrics": `metrics.json` from the files alone (loads no model); returned.

    Returns the metrics when "metrics" is in `steps`, else None. `inputs`: the queries, constitutions, prompts,
    loaded models, baselines and their given responses (`EvaluationInputs`; default: all from `settings`).
    `rejudge` (or `settings.rejudge`): judge again where a judgments file was written by another judge.
    """
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise SamiInputError(f"evaluation steps: unknown {unknown} (expected some of {', '.join(STEPS)})")
    inputs = inputs or EvaluationInputs()
    console = console or Console(stderr=True)
    ev = prepare(settings, model_ref, out_dir, inputs)
    with Progress(console) as progress:
        if "responses" in steps:
            responses_step(
                ev, inputs.baseline_responses, progress, baseline_evals=inputs.baseline_evals,
                reused=inputs.reused_baselines,
            )  # fmt: skip
        if "judgments" in steps and inputs.judge:
            judgments_step(
                ev, progress, judge_model=inputs.judge_model, judge_tokenizer=inputs.judge_tokenizer,
                rejudge=rejudge or settings.rejudge,
            )  # fmt: skip
    if "metrics" not in steps:
        return None
    metrics = metrics_step(ev)
    console.print(metrics_table(metrics))
    for warning in (metrics.get("contrast") or {}).get("warnings", []):
        log.warning("%s", warning)
    return metrics


def run_baseline(
    settings: EvaluationSettings,
    name: str,
    spec: str | BaselineSettings,
    out_dir: str | Path,
    inputs: EvaluationInputs | None = None,
    *,
    console: Console | None = None,
) -> None:
    """Baseline `name`'s own folder `out_dir` (a run's `baselines/NAME/`): its responses under each query's positive
    constitution (`responses.jsonl`, side `name`) and, for an hf baseline with `baseline_intrinsic`, its responses
    under the MI constitutions and their scores (`mi_responses-NAME.jsonl`, `scores.json` `baselines.NAME`), as the
    responses step writes a baseline. Every evaluation that names the folder in `EvaluationInputs.baseline_dirs`
    judges against it and reports its MI, so it is generated once however many models are evaluated. `inputs`:
    the queries, constitutions and prompts (its model, baselines and judge are ignored). Resumable."""
    inputs = replace(
        inputs or EvaluationInputs(), baselines={name: spec}, judge=True, baseline_dirs={}, model=None,
        tokenizer=None, baseline_responses={}, baseline_evals={}, reused_baselines={}, contrast=False,
    )  # fmt: skip
    ev = prepare(settings, as_baseline(spec).model, out_dir, inputs)
    scores = ScoresFile(ev.files.scores)
    if not scores.path.exists():  # the scores say how they were computed, as an evaluation's do
        scores.write(Scores(eos=eos_policy(settings), mi=settings.mi))
    gen_settings = HFGeneration(batch_size=settings.batch_size, dtype=settings.dtype)  # as the responses step's
    with Progress(console or Console(stderr=True)) as progress:
        baseline_responses(ev, JsonlStore(ev.files.responses), {}, gen_settings, progress, {}, {})
