"""The responses step: every generation and every forward pass of an evaluation. The evaluated model's responses
(positive, under the MI constitutions, antithesis, contrast) and their scores (`scores.json`), then the baselines'
responses (`sami.evaluation.baselines`, one baseline model loaded at a time). Under a launch of several processes
the evaluated model's generation and scoring are split over them and the baselines run on rank 0
(`sami.evaluation.parallel`)."""

from __future__ import annotations

from pathlib import Path

from sami.evaluation.baselines import baseline_responses
from sami.evaluation.context import Evaluation, check_mi_store
from sami.evaluation.engine import evaluated_generator
from sami.evaluation.parallel import launch_split
from sami.evaluation.responses import (
    Progress,
    generate_mi,
    generate_patterns,
    generate_side,
    generate_under,
    known_responses,
)
from sami.evaluation.scores import score_evaluated
from sami.generation import HFGeneration


def responses_step(
    ev: Evaluation,
    given: dict[str, dict[str, str]],
    progress: Progress,
    *,
    baseline_evals: dict[str, str | Path] | None = None,
    reused: dict[str, str | Path] | None = None,
) -> None:
    """Resumable: what is on disk is kept, and with every file complete nothing is loaded or rewritten. `given`:
    baseline name -> {query_id: response} already generated; `baseline_evals`: baseline name -> its own evaluation
    folder (its MI responses and scores are copied from there); `reused`: baseline name -> an evaluation folder
    where it was a baseline under the same settings (its responses, MI responses and scores are copied)."""
    split = launch_split(ev)  # under a launch of N processes: every N-th chunk here (sami.evaluation.parallel)
    settings, queries, positive = ev.settings, ev.queries, ev.positive
    responses, mi_store, anti_store, contrast_store = split.stores(ev)
    gen_settings = HFGeneration(batch_size=settings.batch_size, dtype=settings.dtype)
    check_mi_store(ev, mi_store)
    todo = [q for q in queries if f"model:{q.id}" not in responses]
    mi_todo = [q for q in queries if q.id not in mi_store] if settings.intrinsic else []
    patterns = settings.mi == "sign_patterns"
    anti_todo = [q for q in queries if q.id not in anti_store] if anti_store is not None else []
    contrast_todo = [
        (name, q)
        for name in ev.principles
        for q in ev.contrast_queries
        if name in positive[q.id].signs() and f"{name}:{q.id}" not in contrast_store
    ]
    if todo or mi_todo or anti_todo or contrast_todo:
        with evaluated_generator(ev, gen_settings) as generator:  # evaluation.generation; closed after, also on error
            if todo or mi_todo:
                mine = split.mine(todo, settings.chunk_size)
                advance = progress.task(f"responses of {ev.label}", len(mine))
                generate_side(
                    responses, generator, ev.template, mine, positive, side="model", label=ev.label, settings=settings,
                    advance=advance,
                )  # fmt: skip
            split.sync()  # each step below reuses the responses of the steps before it, from every rank
            mine = split.mine(mi_todo, settings.chunk_size)
            if mi_todo and not patterns:
                generate_mi(mi_store, responses, generator, ev.template, mine, ev.constitutions, settings, progress)
            if mi_todo and patterns:  # the antithesis and one-flipped responses below are then taken from these
                known = known_responses(responses, anti_store, contrast_store)
                generate_patterns(mi_store, generator, ev.template, mine, ev.mi_constitutions, settings, progress,
                                   known=known)  # fmt: skip
            split.sync()
            if anti_todo:
                jobs = split.mine([(q.id, q, positive[q.id].flipped(), {}) for q in anti_todo], settings.chunk_size)
                known = known_responses(responses, mi_store)
                generate_under(anti_store, generator, ev.template, jobs, settings, progress,
                                "responses under the antithesis", known=known)  # fmt: skip
            split.sync()
            if contrast_todo:
                jobs = [(f"{n}:{q.id}", q, positive[q.id].flipped({n}), {"principle": n}) for n, q in contrast_todo]
                known = known_responses(responses, mi_store, anti_store)
                generate_under(contrast_store, generator, ev.template, split.mine(jobs, settings.chunk_size), settings,
                                progress, "responses with one principle flipped", known=known)  # fmt: skip
    responses, mi_store, anti_store, contrast_store = split.finish(ev)  # the shards merged: the files
    if split.is_main:
        responses.flush()
    score_evaluated(ev, mi_store, responses, contrast_store, score=split.scorer(ev), write=split.is_main)
    split.record(ev)
    ev.release()
    if not split.is_main:
        return  # the baselines: on rank 0
    baseline_responses(ev, responses, given, gen_settings, progress, baseline_evals or {}, reused or {})
