"""The metrics step: `metrics.json` (`sami.run_files.Metrics`) from the evaluation's files alone (scores.json, the
response and judgment files), pooled and, when the queries come from two or more subsets, per subset; loads no
model."""

from __future__ import annotations

from typing import Any

from sami.data import Query
from sami.errors import SamiInputError
from sami.evaluation.adherence import eval_adherence, query_subset
from sami.evaluation.context import Evaluation
from sami.evaluation.contrast import contrast_metrics
from sami.evaluation.metrics import aggregate_scores
from sami.evaluation.scores import ScoresFile, per_query_dicts
from sami.evaluation.settings import eos_policy
from sami.evaluation.winrate import summarize
from sami.io import JsonlStore, read_jsonl
from sami.run_files import BaselineMetrics, Metrics, SubsetMetrics, write_run_file

# The keys of each entry of metrics.json's `subsets` (what sami.report.summary reads).
SUBSET_KEYS = tuple(SubsetMetrics.model_fields)
# What the pooled metrics add to a subset's.
POOLED_KEYS = ("sami_loss", "accuracy")


def _judgments(ev: Evaluation, ids: set[str]) -> tuple[dict[str, list[dict]], dict | None]:
    """The judgment records of each baseline (of the evaluated queries) and the one judge who gave them."""
    judgments: dict[str, list[dict]] = {}
    judges: list[Any] = []
    for name in ev.baselines:
        path = ev.files.judgments(name)
        if path.is_file():
            judgments[name] = [r for r in read_jsonl(path) if str(r["id"]) in ids]
            for record in judgments[name]:
                if record.get("judge") not in judges:
                    judges.append(record.get("judge"))
    if len(judges) > 1:
        raise SamiInputError(f"{ev.files.root}: the judgments were given by {len(judges)} different judges")
    return judgments, judges[0] if judges else None


class _Parts:
    """The metrics of any subset of the queries, from the files read once."""

    def __init__(
        self, ev: Evaluation, responses: JsonlStore, mi_records: list[dict], anti_store, intrinsic, judgments
    ):
        self.ev, self.responses, self.mi_records, self.anti_store = ev, responses, mi_records, anti_store
        self.intrinsic, self.judgments = intrinsic, judgments

    def of(self, queries: list[Query]) -> dict[str, Any]:
        """Intrinsic metrics, win rates and adherence of `queries` (the keys of `SUBSET_KEYS` and `POOLED_KEYS`)."""
        settings, ids = self.ev.settings, {q.id for q in queries}
        intrinsic: dict = {}
        if settings.intrinsic:
            per_query = per_query_dicts(self.intrinsic, ids)
            records = [r for r in self.mi_records if str(r["id"]) in per_query]
            if records:
                intrinsic = aggregate_scores(per_query, records)
        win_rates = {
            name: summarize([r for r in records if str(r["id"]) in ids], seed=settings.seed)
            for name, records in self.judgments.items()
        }
        adherence = None
        if self.anti_store is not None:
            adherence = eval_adherence(queries, self.ev.positive, self.responses, self.anti_store)
        return {
            "n_queries": len(queries),
            **{k: intrinsic.get(k) for k in ("mi", "mi_sem", "mi_bound", *POOLED_KEYS)},
            "mean_length": intrinsic.get("mean_length") or {},
            "mean_length_tokens": intrinsic.get("mean_length_tokens") or {},
            "win_rates": win_rates,
            "adherence": adherence,
        }


def _baselines(ev: Evaluation, scores, ids: set[str]) -> dict[str, BaselineMetrics]:
    """MI and lengths of each baseline with scores under the MI constitutions (a baseline of its own stage: in its
    folder)."""
    out = {}
    for name in ev.baselines:
        files = ev.baseline_files(name)
        theirs = scores if files == ev.files else ScoresFile(files.scores).read()
        per_query = per_query_dicts(theirs.baselines.get(name) or {}, ids)
        path = files.baseline_mi_responses(name)
        records = [r for r in read_jsonl(path) if str(r["id"]) in per_query] if path.is_file() else []
        if records:
            agg = aggregate_scores(per_query, records)
            out[name] = BaselineMetrics(**{k: agg[k] for k in ("mi", "mi_sem", "mean_length", "mean_length_tokens")})
    return out


def metrics_step(ev: Evaluation) -> dict:
    """Write `metrics.json` and return what was written."""
    settings, queries = ev.settings, ev.queries
    ids = {q.id for q in queries}
    responses, mi_store, anti_store, contrast_store = ev.stores()
    scores = ScoresFile(ev.files.scores).read()
    judgments, judge = _judgments(ev, ids)
    parts = _Parts(ev, responses, [r for r in mi_store.records if str(r["id"]) in ids], anti_store,
                   scores.intrinsic, judgments)  # fmt: skip
    pooled = parts.of(queries)
    contrast = None
    if contrast_store is not None:
        contrast = contrast_metrics(
            ev.contrast_queries, ev.positive, responses, contrast_store, ev.principles, scores=scores.contrast
        )
    by_subset: dict[str, list[Query]] = {}
    for q in queries:
        by_subset.setdefault(query_subset(q), []).append(q)
    subsets = {}
    if len(by_subset) >= 2:
        for name in sorted(by_subset):
            entry = parts.of(by_subset[name])
            subsets[name] = SubsetMetrics(**{k: entry[k] for k in SUBSET_KEYS})
    patterns = settings.mi == "sign_patterns"
    metrics = Metrics(
        model=ev.label,
        model_ref=ev.model_ref,
        n_queries=len(queries),
        n_constitutions=ev.n_constitutions(),
        mi_kind=settings.mi,
        n_sign_patterns=ev.n_constitutions() if patterns else None,
        mi_sampled=ev.mi_sampled if patterns else None,
        mi_eos=eos_policy(settings),
        **{k: pooled[k] for k in ("mi", "mi_sem", "mi_bound", *POOLED_KEYS, "mean_length", "mean_length_tokens")},
        win_rates=pooled["win_rates"],
        judge=judge,
        adherence=pooled["adherence"],
        contrast=contrast,
        baselines=_baselines(ev, scores, ids),
        subsets=subsets,
    )
    return write_run_file(ev.files.metrics, metrics)
