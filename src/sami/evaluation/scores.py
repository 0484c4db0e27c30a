"""`scores.json`, the per-query intrinsic scores of an evaluation folder, so that the metrics step loads no model.

`ScoresFile` is its one reader and writer (the shape: `sami.run_files.Scores`): `{"eos": policy, "mi": kind,
"intrinsic": {query_id: {"mi", "mi_bound", "sami_loss", "accuracy", "lengths"}}, "contrast": {principle:
{query_id: mi}}, "baselines": {name: {query_id: same as intrinsic}}, "baselines_skipped": {name: why its model did
not load}}`. `score_evaluated` scores what the evaluated model's files hold and the file does not yet.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sami.evaluation.context import Evaluation
from sami.evaluation.metrics import intrinsic_metrics
from sami.evaluation.settings import EvaluationSettings, eos_policy
from sami.io import JsonlStore
from sami.run_files import QueryScores, Scores, dump_run_file, read_run_file, write_run_file


class ScoresFile:
    """The one reader and writer of an evaluation folder's `scores.json`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> Scores:
        """The file's scores (empty when absent); unreadable JSON or a wrong field: `SamiInputError` (one line)."""
        return read_run_file(Scores, self.path) or Scores()

    def write(self, scores: Scores) -> None:
        """Write `scores` atomically (the keys that were set)."""
        write_run_file(self.path, scores)

    def matches(self, settings: EvaluationSettings) -> bool:
        """True when the file's scores were computed with `settings`' EOS policy and MI kind."""
        scores = self.read()
        return scores.eos == eos_policy(settings) and scores.mi == settings.mi

    def add_baseline(self, name: str, per_query: dict[str, Any]) -> None:
        """Add per-query scores of baseline `name`."""
        scores = self.read()
        scores.baselines = {**scores.baselines, name: {**scores.baselines.get(name, {}), **_typed(per_query)}}
        self.write(scores)

    def skip_baseline(self, name: str, why: str) -> None:
        """Record that baseline `name` gets no MI or lengths (its model did not load: `why`)."""
        scores = self.read()
        scores.baselines_skipped = {**scores.baselines_skipped, name: why}
        self.write(scores)


def _typed(per_query: dict[str, Any]) -> dict[str, QueryScores]:
    return {qid: QueryScores.model_validate(v) for qid, v in per_query.items()}


def per_query_dicts(per_query: dict[str, QueryScores], ids: set[str]) -> dict[str, dict]:
    """The scores of the queries `ids` as plain dicts (what `sami.evaluation.metrics.aggregate_scores` reads)."""
    return {qid: v.model_dump() for qid, v in per_query.items() if qid in ids}


def intrinsic_scores(model, tokenizer, records, template, settings: EvaluationSettings) -> dict:
    """MI, InfoNCE bound and lengths of MI response records, scored with the evaluation's EOS policy."""
    return intrinsic_metrics(
        model, tokenizer, records, template=template, batch_size=settings.batch_size, eos=eos_policy(settings)
    )


def _carried_over(old: Scores, settings: EvaluationSettings) -> Scores:
    """The scores to keep: all of `old` when computed the same way, else none."""
    scores = Scores(eos=eos_policy(settings), mi=settings.mi, intrinsic={}, contrast={}, baselines={})
    if old.eos == scores.eos and old.mi == settings.mi:
        scores.intrinsic = dict(old.intrinsic)
        scores.baselines = {k: dict(v) for k, v in old.baselines.items()}
        if "baselines_skipped" in old.model_fields_set:
            scores.baselines_skipped = dict(old.baselines_skipped)
        scores.contrast = {k: dict(v) for k, v in old.contrast.items()}
    return scores


def score_evaluated(
    ev: Evaluation,
    mi_store: JsonlStore,
    responses: JsonlStore,
    contrast_store: JsonlStore | None,
    *,
    score: Callable[[list[dict]], dict[str, Any]] | None = None,
    write: bool = True,
):
    """Score what is not scored yet into `scores.json` (the per-query MI, bound, loss, accuracy and lengths of
    mi_responses.jsonl; the pair MI of each contrast response); rewrites the file only when something was added.
    `score`: records -> per-query scores (default: the evaluated model here; `sami.evaluation.parallel` splits it
    over a launch's processes); `write=False`: score without writing (a launch's other ranks)."""
    settings, file = ev.settings, ScoresFile(ev.files.scores)
    if score is None:

        def score(records: list[dict]) -> dict[str, Any]:
            return intrinsic_scores(ev.get_model(), ev.get_tokenizer(), records, ev.template, settings)["per_query"]

    old = file.read()
    scores = _carried_over(old, settings)
    changed = False
    ids = {q.id for q in ev.queries}
    if settings.intrinsic:
        records = [r for r in mi_store.records if str(r["id"]) in ids and str(r["id"]) not in scores.intrinsic]
        if records:
            scores.intrinsic.update(_typed(score(records)))
            changed = True
    if contrast_store is not None:
        by_id = {str(r["id"]): r for r in responses.records}
        flipped = {str(r["id"]): r for r in contrast_store.records}
        for name in ev.principles:
            done = scores.contrast.setdefault(name, {})
            pairs = [
                (q, by_id[f"model:{q.id}"], flipped[f"{name}:{q.id}"])
                for q in ev.contrast_queries
                if q.id not in done and f"model:{q.id}" in by_id and f"{name}:{q.id}" in flipped
            ]
            records = [
                {"id": q.id, "query": q.query,
                 "constitutions": [ev.positive[q.id], ev.positive[q.id].flipped({name})],
                 "responses": [a["response"], b["response"]],
                 "separators": [a.get("separator"), b.get("separator")],
                 "ended_with_eos": [a.get("ended_with_eos"), b.get("ended_with_eos")]}
                for q, a, b in pairs
            ]  # fmt: skip
            if records:
                done.update({qid: v["mi"] for qid, v in score(records).items()})
                changed = True
    if not write:
        return
    if changed or dump_run_file(old) != dump_run_file(scores) and (settings.intrinsic or contrast_store is not None):
        file.write(scores)
