"""The self-generation stage: the current policy writes one response per constitution for each query.

For each query: draw C constitutions with the configured scheme (from a random generator seeded by the run
seed and the query id, so a rerun, a resumed run or another process draws the same ones), render the
generation prompts, generate, post-process, filter, and keep the example or record why it was dropped.

Files (`out_path` = `samples.jsonl`):
- `samples.jsonl`: one record per kept query, the format the trainer reads:
  `{"id", "query", "constitutions": [C Constitution.to_dict()], "prompts": [C training prompts, rendered to
  strings], "responses": [C], "meta": {...the query's meta, "labels", "num_tokens", "finish_reasons",
  "separators", "ended_with_eos", ...}}`. Response j was generated under constitution j; constitution 0 is the
  positive one. Responses are stored without their leading whitespace; `separators[j]` is the whitespace the
  model wrote before response j and `ended_with_eos[j]` whether it ended it with EOS (True), a stop string or
  the budget (False), or the backend cannot tell (None): the trainer scores exactly those ids (`sami.tokens`).
- `samples.dropped.jsonl`: one record per dropped query: `{"id", "reason", "labels", "responses"}`.
- `samples.stats.json`: counts, drop reasons, tokens and time.

Both JSON Lines files are rewritten atomically after every chunk of queries, so an interrupted run loses at
most the chunk in flight; a rerun skips ids already kept or dropped and never writes an id twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sami.constitutions import ConstitutionSet, sample_constitutions
from sami.data import Query
from sami.errors import SamiInputError
from sami.filters import FilterSettings, check_responses, reasoning_filters
from sami.generation import TextGenerator
from sami.io import JsonlStore, atomic_write_json
from sami.layout import dropped_path, stats_path
from sami.manifest import part_hash
from sami.prompts import REASONING_MAX_NEW_TOKENS, PromptTemplate, render_prompt

log = logging.getLogger(__name__)


def query_rng(seed: int, query_id: str) -> random.Random:
    """The constitution-sampling generator of one query (string seeds hash deterministically)."""
    return random.Random(f"sami:{seed}:{query_id}")


class SamplingSettings(BaseModel):
    """How the self-generation stage draws constitutions and generates (`sampling` in a run config; the flags
    of `sami generate`)."""

    model_config = ConfigDict(extra="forbid")

    scheme: Literal["uniform", "paper-dialogue", "paper-summarization", "opposite", "diverse"] = Field(
        "uniform", description="how C constitutions are drawn per query"
    )
    n_constitutions: int = Field(2, description="C: constitutions (and responses) per query")
    max_new_tokens: int = Field(
        350, ge=1, description="response budget during self-generation (350; 800 with reasoning unless set)"
    )
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy, as in the paper")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    reasoning: bool = Field(False, description="chain-of-thought data generation (reasoning first, then the response)")
    chunk_size: int = Field(8, ge=1, description="queries generated and written per chunk")
    dropped_responses: bool = Field(
        True, description="keep the responses of dropped queries in samples.dropped.jsonl (false: id, reason, labels)"
    )

    @field_validator("n_constitutions")
    @classmethod
    def _at_least_two(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"SAMI contrasts at least 2 constitutions, got {value}")
        return value

    @model_validator(mode="after")
    def _reasoning_budget(self):
        # chain-of-thought generation needs room for the reasoning: 800 new tokens unless set explicitly
        if self.reasoning and "max_new_tokens" not in self.model_fields_set:
            self.max_new_tokens = REASONING_MAX_NEW_TOKENS
        return self


def generate_samples(
    generator: TextGenerator,
    queries: list[Query],
    cset: ConstitutionSet,
    out_path: str | Path,
    sampling: SamplingSettings,
    *,
    template: PromptTemplate,
    filters: FilterSettings | None = None,
    seed: int = 0,
    tokenizer: Any = None,
    mode: str = "train",
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Self-generate SAMI training examples into `out_path` (resumable) as `sampling` says; returns the stats.

    `tokenizer` renders chat-style training prompts to strings (default: the generator's tokenizer, if it
    has one). `filters` defaults to the preset of `template.name`. `mode` is the principle pool drawn from.

    `sampling.reasoning` (chain-of-thought data generation; also on when `template` already has a marker):
    generate with `template.with_reasoning()`, keep only the text after the marker as the response (a query
    with a completion lacking the marker is dropped as "no_marker"), store the C reasonings in
    `meta["reasoning"]`, and add `reasoning_filters` to `filters`. The record's `prompts` stay the ordinary
    training prompts.
    """
    if template.marker is not None and not sampling.reasoning:
        sampling = SamplingSettings.model_validate({**sampling.model_dump(exclude_unset=True), "reasoning": True})
    if sampling.reasoning:
        template = template.with_reasoning()
    filters = filters or FilterSettings.for_task(template.name)
    if sampling.reasoning:
        filters = reasoning_filters(filters, template.name)
    tokenizer = tokenizer if tokenizer is not None else getattr(generator, "tokenizer", None)
    if template.style == "chat" and tokenizer is None:
        raise SamiInputError("prompt style 'chat' needs the policy tokenizer to render training prompts")
    console = console or Console(stderr=True)
    seen_ids: set[str] = set()
    for q in queries:
        if q.id in seen_ids:
            raise SamiInputError(f"query id {q.id!r} appears twice in the queries to generate for")
        seen_ids.add(q.id)

    out_path = Path(out_path)
    kept = JsonlStore(out_path)
    dropped = JsonlStore(dropped_path(out_path))
    todo = [q for q in queries if q.id not in kept and q.id not in dropped]
    previous = read_stats(stats_path(out_path))
    settings = generation_settings(sampling, template, filters, cset, seed)
    if len(kept) or len(dropped):
        check_resumable(out_path, previous.get("settings"), settings)
    run = {"queries": 0, "kept": 0, "dropped": 0, "tokens": 0, "seconds": 0.0}
    start = time.perf_counter()

    def write_stats() -> dict[str, Any]:
        run["seconds"] = round(time.perf_counter() - start, 3)
        stats = sample_stats(
            len(queries), kept.records, dropped.records, previous, run,
            scheme=sampling.scheme, n_constitutions=sampling.n_constitutions, seed=seed,
        )  # fmt: skip
        stats["settings"] = settings
        atomic_write_json(stats_path(out_path), stats)
        return stats

    columns = [
        TextColumn("[bold]generate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("queries · kept {task.fields[kept]} · dropped {task.fields[dropped]} · {task.fields[tps]} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    done_before = len(queries) - len(todo)
    bar = Progress(*columns, console=console, disable=not progress)
    task = bar.add_task("generate", total=len(queries), completed=done_before, kept=len(kept), dropped=len(dropped))
    bar.update(task, tps="-")
    try:
        with bar:
            for i in range(0, len(todo), sampling.chunk_size):
                chunk = todo[i : i + sampling.chunk_size]
                _generate_chunk(
                    generator, chunk, cset, kept, dropped, sampling,
                    template=template, filters=filters, seed=seed, tokenizer=tokenizer, mode=mode, run=run,
                )  # fmt: skip
                kept.flush()
                dropped.flush()
                stats = write_stats()
                tps = run["tokens"] / max(stats["this_run"]["seconds"], 1e-9)
                bar.update(task, advance=len(chunk), kept=len(kept), dropped=len(dropped), tps=f"{tps:.1f}")
    finally:
        kept.flush()
        dropped.flush()
        stats = write_stats()
    if progress:
        console.print(drop_table(stats))
    return stats


def _generate_chunk(
    generator: TextGenerator,
    chunk: list[Query],
    cset: ConstitutionSet,
    kept: JsonlStore,
    dropped: JsonlStore,
    sampling: SamplingSettings,
    *,
    template: PromptTemplate,
    filters: FilterSettings,
    seed: int,
    tokenizer: Any,
    mode: str,
    run: dict[str, Any],
) -> None:
    """Generate all C responses of a chunk of queries in one generator call, then keep or drop each query."""
    scheme, n = sampling.scheme, sampling.n_constitutions
    drawn = [sample_constitutions(cset, scheme, n, query_rng(seed, q.id), query=q, mode=mode) for q in chunk]
    prompts = [template.generation_prompt(c, q) for q, cs in zip(chunk, drawn, strict=True) for c in cs]
    completions = generator.generate(
        prompts,
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        stop=template.stop or None,
        seed=seed,
    )
    if len(completions) != len(prompts):
        raise RuntimeError(f"the generator returned {len(completions)} completions for {len(prompts)} prompts")
    pos = 0
    for q, cs in zip(chunk, drawn, strict=True):
        outs = completions[pos : pos + len(cs)]
        pos += len(cs)
        parts = [template.extract(c.text) for c in outs]  # (reasoning, response) or None: no marker
        responses = [p[1] if p is not None else c.text.strip() for p, c in zip(parts, outs, strict=True)]
        num_tokens = [c.num_tokens for c in outs]
        finish = [c.finish_reason for c in outs]
        separators = [template.separator(c.text) for c in outs]
        ended = [c.ended_with_eos for c in outs]
        run["tokens"] += sum(num_tokens)
        run["queries"] += 1
        labels = [c.label() for c in cs]
        errors = [c.error for c in outs if c.finish_reason == "error"]
        if errors:
            reason = f"error:{errors[0]}"
        elif any(p is None for p in parts):
            reason = "no_marker"
        else:
            reason = check_responses(responses, cs, filters, num_tokens=num_tokens, finish_reasons=finish)
        if reason is not None:
            record = {"id": q.id, "reason": reason, "labels": labels}
            dropped.add({**record, "responses": responses} if sampling.dropped_responses else record)
            run["dropped"] += 1
            continue
        kept.add(
            {
                "id": q.id,
                "query": q.query,
                "constitutions": [c.to_dict() for c in cs],
                "prompts": [render_prompt(template.training_prompt(c, q), tokenizer) for c in cs],
                "responses": responses,
                "meta": {
                    **q.meta,
                    "labels": labels,
                    "scheme": sampling.scheme,
                    "num_tokens": num_tokens,
                    "finish_reasons": finish,
                    "separators": separators,
                    "ended_with_eos": ended,
                    **({"reasoning": [p[0] for p in parts]} if template.marker else {}),
                },
            }
        )
        run["kept"] += 1


def generation_settings(sampling, template, filters, cset: ConstitutionSet, seed: int) -> dict[str, str]:
    """A hash per setting that decides what a samples file holds (kept in its stats, checked on resume)."""
    return {
        "sampling": part_hash(sampling.model_dump(mode="json")),
        "prompts": part_hash(dataclasses.asdict(template)),
        "filters": part_hash(filters.model_dump(mode="json")),
        "constitutions": part_hash(cset.to_dict()),
        "seed": part_hash(seed),
    }


def check_resumable(out_path: Path, recorded: Any, settings: dict[str, str]) -> None:
    """Refuse to add records to a samples file written with other settings (the two would mix in one file).
    Files from before the settings were recorded are resumed as before."""
    if not isinstance(recorded, dict):
        return
    changed = sorted(k for k in settings if recorded.get(k) != settings[k])
    if changed:
        raise SamiInputError(
            f"{out_path}: written with other settings ({', '.join(changed)} changed); resuming would mix records "
            "of both: write to another file, or delete it (and its .stats.json, .dropped.jsonl) to start over"
        )


def read_stats(path: Path) -> dict[str, Any]:
    """A `samples.stats.json` ({} when missing or unreadable)."""
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError):
        log.warning("%s: unreadable, starting its totals afresh", path)
        return {}


def sample_stats(
    n_queries: int,
    kept: list[dict],
    dropped: list[dict],
    previous: dict[str, Any],
    run: dict[str, Any],
    *,
    scheme: str | None,
    n_constitutions: int | None,
    seed: int | None,
) -> dict[str, Any]:
    """Totals over the whole file (earlier runs, in `previous`, included) plus this run's numbers (`run`: at
    least `tokens` and `seconds`)."""
    reasons = Counter(str(r["reason"]) for r in dropped)
    kinds = Counter(reason.split(":", 1)[0] for reason in reasons.elements())
    tokens = int(previous.get("tokens", 0)) + int(run["tokens"])
    seconds = float(previous.get("seconds", 0.0)) + float(run["seconds"])
    # "previous" already holds the totals of earlier runs; this run's share is added once, not per chunk.
    return {
        "queries": n_queries,
        "done": len(kept) + len(dropped),
        "kept": len(kept),
        "dropped": len(dropped),
        "keep_rate": round(len(kept) / max(len(kept) + len(dropped), 1), 4),
        "drop_reasons": dict(reasons.most_common()),
        "drop_kinds": dict(kinds.most_common()),
        "scheme": scheme,
        "n_constitutions": n_constitutions,
        "seed": seed,
        "tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None,
        "this_run": dict(run),
        "runs": int(previous.get("runs", 0)) + 1,
    }


def drop_table(stats: dict[str, Any]) -> Table:
    """A rich table of kept/dropped counts and drop reasons."""
    done = max(stats["done"], 1)
    table = Table(title=f"self-generation: {stats['kept']} kept, {stats['dropped']} dropped of {stats['done']}")
    table.add_column("outcome")
    table.add_column("queries", justify="right")
    table.add_column("share", justify="right")
    table.add_row("kept", str(stats["kept"]), f"{stats['kept'] / done:.0%}")
    for reason, count in stats["drop_reasons"].items():
        table.add_row(f"dropped: {reason}", str(count), f"{count / done:.0%}")
    return table
