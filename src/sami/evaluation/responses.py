"""Greedy responses of the evaluation's responses step: one side under the positive constitutions, the evaluated
model under the MI constitutions, under the antithesis and one-flipped constitutions, reusing what is written."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress

from sami.constitutions import Constitution
from sami.data import Query
from sami.evaluation.settings import EvaluationSettings
from sami.io import JsonlStore

log = logging.getLogger(__name__)


class Progress:
    """A rich progress bar (quiet when not a terminal)."""

    def __init__(self, console):
        self.progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        )

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def task(self, description: str, total: int) -> Callable[[int], None]:
        task_id = self.progress.add_task(description, total=total)
        return lambda n: self.progress.advance(task_id, n)


def generate_side(
    store: JsonlStore,
    generator,
    template,
    queries: Sequence[Query],
    positive: dict,
    *,
    side: str,
    label: str,
    settings: EvaluationSettings,
    advance: Callable[[int], None],
) -> None:
    """Generate the missing greedy responses of one side under each query's positive constitution."""
    todo = [q for q in queries if f"{side}:{q.id}" not in store]
    for start in range(0, len(todo), settings.chunk_size):
        chunk = todo[start : start + settings.chunk_size]
        prompts = [template.generation_prompt(positive[q.id], q) for q in chunk]
        completions = generator.generate(
            prompts, max_new_tokens=settings.max_new_tokens, temperature=0.0, stop=template.stop or None
        )
        for q, c in zip(chunk, completions, strict=True):
            if c.finish_reason == "error":
                log.warning("%s: no response for query %s (%s); a rerun retries it", side, q.id, c.error)
                continue
            store.add(
                {
                    "id": f"{side}:{q.id}",
                    "query_id": q.id,
                    "side": side,
                    "model": label,
                    "query": q.query,
                    "constitution": positive[q.id].to_dict(),
                    "response": template.postprocess(c.text),
                    "num_tokens": int(c.num_tokens),
                    "separator": template.separator(c.text),
                    "ended_with_eos": c.ended_with_eos,
                }
            )
        store.flush()
        advance(len(chunk))


def known_responses(*stores) -> dict[tuple[str, str], tuple]:
    """`(query_id, constitution label) -> (response, num_tokens, separator, ended_with_eos)` of the evaluated model's
    greedy responses already
    written (responses.jsonl's model side, mi_responses.jsonl, antithesis_responses.jsonl). Same label = the same
    principles in the same forms; only the order in the prompt may differ."""

    known: dict[tuple[str, str], tuple] = {}
    for store in (s for s in stores if s is not None):
        for r in store.records:
            if "responses" in r:  # an mi record: C constitutions
                n = len(r["responses"])
                counts = r.get("num_tokens") or [0] * n
                seps, ended = r.get("separators") or [None] * n, r.get("ended_with_eos") or [None] * n
                for c, text, k, sep, eos in zip(r["constitutions"], r["responses"], counts, seps, ended, strict=True):
                    known.setdefault((str(r["id"]), Constitution.from_dict(c).label()), (text, int(k), sep, eos))
            elif r.get("side", "model") == "model" and "constitution" in r:
                qid = str(r.get("query_id", r["id"]))
                known.setdefault(
                    (qid, Constitution.from_dict(r["constitution"]).label()),
                    (r["response"], int(r.get("num_tokens", 0)), r.get("separator"), r.get("ended_with_eos")),
                )
    return known


def generate_under(store, generator, template, jobs, settings, progress, description, *, known) -> None:
    """Greedy responses for `jobs` = [(record id, query, constitution, extra fields)], reusing `known` ones."""
    advance = progress.task(description, len(jobs))
    for start in range(0, len(jobs), settings.chunk_size):
        chunk = jobs[start : start + settings.chunk_size]
        fresh = [job for job in chunk if (job[1].id, job[2].label()) not in known]
        completions = []
        if fresh:
            completions = generator.generate(
                [template.generation_prompt(c, q) for _, q, c, _ in fresh],
                max_new_tokens=settings.max_new_tokens, temperature=0.0, stop=template.stop or None,
            )  # fmt: skip
        made = {}
        for (rid, _, _, _), c in zip(fresh, completions, strict=True):
            if c.finish_reason == "error":
                log.warning("no response for %s (%s); a rerun retries it", rid, c.error)
                continue
            made[rid] = (template.postprocess(c.text), int(c.num_tokens), template.separator(c.text), c.ended_with_eos)
        for rid, q, c, extra in chunk:
            reused = (q.id, c.label()) in known
            got = known.get((q.id, c.label())) or made.get(rid)
            if got is None:
                continue
            store.add(
                {
                    "id": rid,
                    "query_id": q.id,
                    **extra,
                    "query": q.query,
                    "constitution": c.to_dict(),
                    "response": got[0],
                    "num_tokens": got[1],
                    "separator": got[2],
                    "ended_with_eos": got[3],
                    "reused": reused,
                }
            )
        store.flush()
        advance(len(chunk))


def generate_mi(store, responses, generator, template, todo, constitutions, settings, progress) -> None:
    """Greedy responses of the evaluated model under all C constitutions of each query (mi_responses.jsonl).

    The response under the positive constitution is taken from responses.jsonl when it was written under the
    same constitution (same prompt, greedy decoding), so it is not generated twice.
    """
    advance = progress.task("responses under all constitutions", len(todo))
    for start in range(0, len(todo), settings.chunk_size):
        chunk = todo[start : start + settings.chunk_size]
        slots, prompts = [], []  # (query index, constitution index) of each prompt to generate
        known: dict[tuple[int, int], tuple[str, int, str | None, bool | None]] = {}
        by_id = {str(r["id"]): r for r in responses.records}
        for qi, q in enumerate(chunk):
            first = by_id.get(f"model:{q.id}")
            for j, c in enumerate(constitutions[q.id]):
                if j == 0 and first and first.get("constitution") == c.to_dict():
                    known[(qi, j)] = (
                        first["response"],
                        int(first.get("num_tokens", 0)),
                        first.get("separator"),
                        first.get("ended_with_eos"),
                    )
                else:
                    slots.append((qi, j))
                    prompts.append(template.generation_prompt(c, q))
        completions = []
        if prompts:
            completions = generator.generate(
                prompts, max_new_tokens=settings.max_new_tokens, temperature=0.0, stop=template.stop or None
            )
        failed: set[int] = set()
        for (qi, j), c in zip(slots, completions, strict=True):
            if c.finish_reason == "error":
                failed.add(qi)
            known[(qi, j)] = (
                template.postprocess(c.text),
                int(c.num_tokens),
                template.separator(c.text),
                c.ended_with_eos,
            )
        for qi, q in enumerate(chunk):
            if qi in failed:
                log.warning("mi responses: generation failed for query %s; a rerun retries it", q.id)
                continue
            cs = constitutions[q.id]
            store.add(
                {
                    "id": q.id,
                    "query": q.query,
                    "constitutions": [c.to_dict() for c in cs],
                    "responses": [known[(qi, j)][0] for j in range(len(cs))],
                    "num_tokens": [known[(qi, j)][1] for j in range(len(cs))],
                    "separators": [known[(qi, j)][2] for j in range(len(cs))],
                    "ended_with_eos": [known[(qi, j)][3] for j in range(len(cs))],
                    **_system_meta(q),
                }
            )
        store.flush()
        advance(len(chunk))


def generate_patterns(store, generator, template, todo, constitutions, settings, progress, *, known) -> None:
    """Greedy responses of the evaluated model under every sign pattern of each query (mi_responses.jsonl),
    reusing `known` responses written under the same constitution (`known_responses`)."""
    advance = progress.task("responses under every sign pattern", len(todo))
    for start in range(0, len(todo), settings.chunk_size):
        chunk = todo[start : start + settings.chunk_size]
        got: dict[tuple[str, int], tuple] = {}
        fresh = []
        for q in chunk:
            for j, c in enumerate(constitutions[q.id]):
                if (q.id, c.label()) in known:
                    got[(q.id, j)] = known[(q.id, c.label())]
                else:
                    fresh.append((q, j, c))
        completions = []
        if fresh:
            completions = generator.generate(
                [template.generation_prompt(c, q) for q, _, c in fresh],
                max_new_tokens=settings.max_new_tokens, temperature=0.0, stop=template.stop or None,
            )  # fmt: skip
        failed: set[str] = set()
        for (q, j, _), c in zip(fresh, completions, strict=True):
            if c.finish_reason == "error":
                failed.add(q.id)
            got[(q.id, j)] = (template.postprocess(c.text), int(c.num_tokens), template.separator(c.text),
                              c.ended_with_eos)  # fmt: skip
        for q in chunk:
            if q.id in failed:
                log.warning("mi responses: generation failed for query %s; a rerun retries it", q.id)
                continue
            cs = constitutions[q.id]
            parts = [got[(q.id, j)] for j in range(len(cs))]
            store.add(
                {
                    "id": q.id,
                    "query": q.query,
                    "constitutions": [c.to_dict() for c in cs],
                    "responses": [x[0] for x in parts],
                    "num_tokens": [x[1] for x in parts],
                    "separators": [x[2] for x in parts],
                    "ended_with_eos": [x[3] for x in parts],
                    **_system_meta(q),
                }
            )
        store.flush()
        advance(len(chunk))


def _system_meta(q) -> dict:
    """`{"meta": {"system": ...}}` for a query with its own system text (the MI scoring rebuilds its prompts)."""
    system = q.meta.get("system")
    return {"meta": {"system": system}} if system else {}
