"""The responses step split over the processes of a launch: the evaluated model's generation and its scoring.

Under `accelerate launch` (or torchrun) with N processes, every rank runs the same responses step (`responses_step`)
over a `Split`. Each generation step (the model's own responses, the responses under the MI constitutions, under
the antithesis, with one principle flipped) cuts its list of work into the chunks a one-process run would generate
(`evaluation.chunk_size` items each) and rank r takes chunks r, r + N, ...: every `generate` call holds the same
prompts as in one process, so the hf generator builds the same batches (same padding) and greedy decoding gives the
same tokens. A rank writes into its own resumable shard (`responses.rank{r}.jsonl`, ...) and reads every rank's
shards (`ShardedStore`); after each step a barrier makes the shards visible, since a later step reuses earlier
responses under the same constitution. Then rank 0 merges the shards into the files in a one-process run's order,
removes them, and records which rank generated which ids in `responses.ranks.json`.

Scoring (`scores.json`) is split the same way: the MI records are cut into the forward batches a one-process run
makes (`score_blocks`: grouped by C, `evaluation.batch_size` queries each), rank r scores blocks r, r + N, ..., the
per-query results are gathered (`accelerate.utils.gather_object`) and rank 0 writes the file. The baselines then run
on rank 0 alone. Resume: a killed launch leaves complete shards (each flushed per chunk); the next launch, of any
size, first merges them (rank 0) and only then splits what is still to do.

Hand-written: accelerate splits a list over processes (`split_between_processes`) but not into a one-process run's
chunks, and knows nothing of resumable shards; `sami.distributed` does the same for self-generation.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from accelerate.utils import gather_object

from sami.distributed import process_state, shard_paths
from sami.errors import SamiInputError
from sami.evaluation.context import Evaluation
from sami.evaluation.scores import intrinsic_scores
from sami.io import JsonlStore, atomic_write_json, read_jsonl, read_text, write_jsonl
from sami.layout import shard_path

RANKS_FILE = "responses.ranks.json"


class ShardedStore:
    """A `JsonlStore`-like view of one evaluation file and every rank's shard of it; `add` and `flush` write this
    rank's shard only, `refresh` reads the other shards again (after a barrier)."""

    def __init__(self, path: str | Path, rank: int):
        self.path = Path(path)
        self.own = JsonlStore(shard_path(self.path, rank))
        self.refresh()

    def refresh(self) -> None:
        self.records: list[dict] = []
        self.done: set[str] = set()
        for path in [self.path, *shard_paths(self.path)]:
            if path != self.own.path and path.exists():
                for record in read_jsonl(path):
                    self._note(record)
        for record in self.own.records:
            self._note(record)

    def _note(self, record: dict) -> None:
        if str(record["id"]) not in self.done:
            self.records.append(record)
            self.done.add(str(record["id"]))

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, record_id: object) -> bool:
        return str(record_id) in self.done

    def add(self, record: dict) -> bool:
        if str(record["id"]) in self.done:
            return False
        self.own.add(record)
        self._note(record)
        return True

    def flush(self) -> None:
        self.own.flush()


def chunks_of(items: Sequence, size: int, rank: int, world: int) -> list:
    """The items of chunks rank, rank + world, ... of `items` cut into chunks of `size` (the last may be short)."""
    n = math.ceil(len(items) / size)
    return [x for j in range(rank, n, world) for x in items[j * size : (j + 1) * size]]


def score_blocks(records: Sequence[dict], batch_size: int) -> tuple[list[list[dict]], list[dict]]:
    """`(blocks, unscored)`: the forward batches `sami.evaluation.metrics.intrinsic_metrics` makes of `records` (the
    records whose responses are all non-empty, grouped by C in increasing order, `batch_size` each, in order) and the
    records it only measures (an empty response). Mirrors that function's batching, so that a rank scoring some
    blocks runs the same forwards as one process."""
    groups: dict[int, list[dict]] = {}
    unscored = []
    for r in records:
        if all(str(x).strip() for x in r["responses"]):
            groups.setdefault(len(r["constitutions"]), []).append(r)
        else:
            unscored.append(r)
    blocks = [g[i : i + batch_size] for _, g in sorted(groups.items()) for i in range(0, len(g), batch_size)]
    return blocks, unscored


def merged_records(main: list[dict], extra: list[dict], order: dict[str, int]) -> list[dict]:
    """`main` then `extra` (first record of an id wins), the records whose id is in `order` sorted by it and placed
    after the other records that came before them (e.g. a comparison's seeded baseline responses), the rest after."""
    seen: set[str] = set()
    records = []
    for r in [*main, *extra]:
        if str(r["id"]) not in seen:
            seen.add(str(r["id"]))
            records.append(r)
    ordered = sorted((r for r in records if str(r["id"]) in order), key=lambda r: order[str(r["id"])])
    first = next((i for i, r in enumerate(records) if str(r["id"]) in order), len(records))
    before = records[:first]
    after = [r for r in records[first:] if str(r["id"]) not in order]
    return [*before, *ordered, *after]


def file_orders(ev: Evaluation) -> dict[Path, dict[str, int]]:
    """The evaluated model's files and the order a one-process run writes their ids in."""
    files, index = ev.files, {q.id: i for i, q in enumerate(ev.queries)}
    n = len(ev.queries)
    contrast = {
        f"{name}:{q.id}": p * n + index[q.id] for p, name in enumerate(ev.principles) for q in ev.contrast_queries
    }
    return {
        files.responses: {f"model:{qid}": i for qid, i in index.items()},
        files.mi_responses: dict(index),
        files.antithesis_responses: dict(index),
        files.contrast_responses: contrast,
    }


def merge_shards(ev: Evaluation) -> dict[str, int]:
    """Merge every shard of the evaluated model's files into the files (a one-process run's order), then remove the
    shards; returns how many records each file took from shards. Safe to rerun after a crash."""
    taken = {}
    for path, order in file_orders(ev).items():
        shards = shard_paths(path)
        if not shards:
            continue
        main = read_jsonl(path) if path.exists() else []
        extra = [r for shard in shards for r in read_jsonl(shard)]
        records = merged_records(main, extra, order)
        write_jsonl(path, records)
        taken[path.name] = len(records) - len(main)
        for shard in shards:
            shard.unlink(missing_ok=True)
    return taken


def has_shards(ev: Evaluation) -> bool:
    return any(shard_paths(path) for path in file_orders(ev))


def on_main_process(fn: Callable[..., Any], *args: Any) -> None:
    """Run `fn(*args)` on rank 0 of a launch (then the others wait for it), or here when not launched."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        fn(*args)
        return
    state = process_state()
    if state.is_main_process:
        fn(*args)
    state.wait_for_everyone()


class Split:
    """How the responses step's work is split: `Split.alone()` does everything here (one process, the plain files);
    `Split.launched()` over the processes of a launch (see the module docstring)."""

    def __init__(self, rank: int = 0, world: int = 1, state: Any = None):
        self.rank, self.world, self.state = rank, world, state
        self.stores_: tuple = ()
        self.scored: list[int] = [0] * world
        self.reused: dict[str, int] = {}
        self.generated: list[dict[str, list[str]]] = []

    @classmethod
    def alone(cls) -> Split:
        return cls()

    @classmethod
    def launched(cls, ev: Evaluation) -> Split:
        """Every rank of the launch calls this with the same evaluation; rank 0 first merges a killed launch's
        shards. Each rank's evaluated model goes on its own device (unless `evaluation.device` says where)."""
        state = process_state()
        if ev.settings.device_map is not None and state.num_processes > 1:
            raise SamiInputError(
                f"evaluation.device_map {ev.settings.device_map!r} spreads one model over the devices of one process: "
                f"launch the evaluation with one process, not {state.num_processes}"
            )
        if ev.settings.device is None and ev.model is None:
            ev.settings = ev.settings.model_copy(update={"device": str(state.device)})
        split = cls(state.process_index, state.num_processes, state)
        if state.is_main_process:
            split.reused = merge_shards(ev)
        state.wait_for_everyone()
        return split

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def stores(self, ev: Evaluation) -> tuple:
        """responses, mi_responses, antithesis_responses, contrast_responses (see `Evaluation.stores`)."""
        plain = ev.stores()
        if self.state is None:
            self.stores_ = plain
            return plain
        self.stores_ = tuple(None if s is None else ShardedStore(s.path, self.rank) for s in plain)
        return self.stores_

    def mine(self, items: Sequence, size: int) -> list:
        """This rank's chunks of `items` (all of them alone)."""
        return list(items) if self.state is None else chunks_of(items, size, self.rank, self.world)

    def sync(self) -> None:
        """After a generation step: wait for every rank, then read their shards."""
        if self.state is None:
            return
        self.state.wait_for_everyone()
        for store in self.stores_:
            if store is not None:
                store.refresh()

    def finish(self, ev: Evaluation) -> tuple:
        """After the last generation step: rank 0 merges the shards into the files; every rank reopens them."""
        if self.state is None:
            return self.stores_
        self.state.wait_for_everyone()
        generated = {
            name: [str(r["id"]) for r in store.own.records]
            for name, store in zip(("responses", "mi_responses", "antithesis", "contrast"), self.stores_, strict=True)
            if store is not None
        }
        self.generated = gather_object([generated])
        if self.is_main:
            merge_shards(ev)
        self.state.wait_for_everyone()
        return ev.stores()

    def scorer(self, ev: Evaluation) -> Callable[[list[dict]], dict[str, dict]] | None:
        """`records -> {query_id: scores}` over every rank (None alone: `score_evaluated`'s own)."""
        if self.state is None:
            return None

        def score(records: list[dict]) -> dict[str, dict]:
            blocks, unscored = score_blocks(records, ev.settings.batch_size)
            mine = [r for j, b in enumerate(blocks) if j % self.world == self.rank for r in b]
            if self.is_main:
                mine += unscored
            per_query = {}
            if mine:
                per_query = intrinsic_scores(ev.get_model(), ev.get_tokenizer(), mine, ev.template, ev.settings)
                per_query = per_query["per_query"]
            parts = gather_object([per_query])
            every = {}
            for rank, part in enumerate(parts):
                self.scored[rank] += len(part)
                every.update(part)
            return {str(r["id"]): every[str(r["id"])] for r in records}

        return score

    def record(self, ev: Evaluation) -> None:
        """Rank 0: append this launch's share of each rank to `responses.ranks.json`."""
        if self.state is None or not self.is_main:
            return
        path = ev.files.root / RANKS_FILE
        launches = json.loads(read_text(path)).get("launches", []) if path.exists() else []
        ranks = [{"rank": r, **ids, "scored": self.scored[r]} for r, ids in enumerate(self.generated)]
        launches.append({"processes": self.world, "merged_from_earlier_shards": self.reused, "ranks": ranks})
        atomic_write_json(path, {"launches": launches})


def launch_split(ev: Evaluation) -> Split:
    """`Split.launched` under a launch of several processes, or when a killed launch left shards; else alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or has_shards(ev):
        return Split.launched(ev)
    return Split.alone()
