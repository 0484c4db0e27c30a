"""Data-parallel self-generation: the same stage as `sami.sampling`, split over the processes of a launch.

Under `accelerate launch` (or torchrun) with N processes, every rank agrees on the queries still to do (those not
already in `samples.jsonl`, `samples.dropped.jsonl` or any shard), takes every N-th of them and generates into its
own resumable shard `samples.rank{r}.jsonl` with `sami.sampling.generate_samples`. After a barrier, rank 0 merges
the shards with what the output files already held, in the original query order, writes `samples.jsonl`,
`samples.dropped.jsonl` and `samples.stats.json` atomically, and removes the shards.

Resume: a killed launch leaves complete shards (each flushed per chunk); a rerun, with any number of processes,
skips every id found in the outputs or in any shard, and the merge keeps the first record of an id, so no id is
written twice.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from sami.constitutions import ConstitutionSet
from sami.data import Query
from sami.generation.factory import policy_generator
from sami.io import JsonlStore, atomic_write_json, read_jsonl, write_jsonl
from sami.layout import dropped_path, shard_path, stats_path
from sami.sampling import generate_samples, read_stats, sample_stats

log = logging.getLogger(__name__)


def process_state():
    """accelerate's `PartialState` for this process (a gloo group on CPU-only machines, as `sami.launch` sets up)."""
    return PartialState(cpu=not torch.cuda.is_available())


def shard_paths(out_path: str | Path) -> list[Path]:
    """The kept-sample shards beside `out_path` (from a launch of any size), sorted by rank."""
    out_path = Path(out_path)
    pattern = re.compile(rf"^{re.escape(out_path.stem)}\.rank(\d+){re.escape(out_path.suffix)}$")
    if not out_path.parent.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_path.parent.iterdir() if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


def _ids(path: Path) -> set[str]:
    return {str(r["id"]) for r in read_jsonl(path)} if path.exists() else set()


def done_ids(out_path: str | Path) -> set[str]:
    """Ids already kept or dropped, in the merged outputs or in any shard."""
    out_path = Path(out_path)
    ids = _ids(out_path) | _ids(dropped_path(out_path))
    for shard in shard_paths(out_path):
        ids |= _ids(shard) | _ids(dropped_path(shard))
    return ids


def generate_samples_distributed(
    config: Any,
    *,
    policy: str,
    queries: list[Query],
    cset: ConstitutionSet,
    out_path: str | Path,
    seed: int | None = None,
    progress: bool = True,
) -> dict[str, Any] | None:
    """Run the self-generation stage of a `RunConfig` across all processes of the current launch.

    Every rank must call this with the same arguments (`seed` defaults to `config.seed`). Returns the merged
    stats on rank 0 and None elsewhere. With one process and no shards on disk, it is exactly one
    `generate_samples` call into `out_path`.
    """
    out_path = Path(out_path)
    state = process_state()
    if state.num_processes == 1 and not shard_paths(out_path):
        return _generate(config, policy, queries, cset, out_path, seed=seed, progress=progress)
    rank, world = state.process_index, state.num_processes
    if config.generation.backend == "hf" and config.generation.device is None:
        generation = config.generation.model_copy(update={"device": str(state.device)})
        config = config.model_copy(update={"generation": generation})
    out_path.parent.mkdir(parents=True, exist_ok=True)
    finished = done_ids(out_path)
    todo = [q for q in queries if q.id not in finished]
    state.wait_for_everyone()  # every rank has read the same files before any shard changes
    mine = todo[rank::world]
    start = time.perf_counter()
    if mine:
        shard = shard_path(out_path, rank)
        _generate(config, policy, mine, cset, shard, seed=seed, progress=progress and state.is_main_process)
    seconds = time.perf_counter() - start
    state.wait_for_everyone()
    stats = None
    if state.is_main_process:
        stats = merge_shards(out_path, queries, config=config, world=world, seconds=seconds)
    state.wait_for_everyone()
    return stats


def _generate(
    config: Any, policy: str, queries: list[Query], cset: ConstitutionSet, out_path: Path, *, seed: int | None,
    progress: bool,
) -> dict[str, Any]:  # fmt: skip
    generator, tokenizer = policy_generator(config, policy)
    return generate_samples(
        generator, queries, cset, out_path, config.sampling, template=config.prompts.build(), filters=config.filters,
        seed=config.seed if seed is None else seed, tokenizer=tokenizer, progress=progress,
    )  # fmt: skip


def merge_shards(
    out_path: str | Path, queries: list[Query], *, config: Any = None, world: int = 1, seconds: float = 0.0
) -> dict[str, Any]:
    """Merge every shard into `samples.jsonl` / `samples.dropped.jsonl` (query order, first record of an id
    wins), write combined `samples.stats.json`, then delete the shards. Safe to rerun after a crash."""
    out_path = Path(out_path)
    shards = shard_paths(out_path)
    order = {q.id: i for i, q in enumerate(queries)}

    def merged(paths: list[Path]) -> list[dict]:
        store = JsonlStore(paths[0])
        for path in paths[1:]:
            if path.exists():
                for rec in read_jsonl(path):
                    store.add(rec)
        return sorted(store.records, key=lambda r: order.get(str(r["id"]), len(order)))

    kept = merged([out_path, *shards])
    dropped = merged([dropped_path(out_path), *map(dropped_path, shards)])
    kept_ids = {str(r["id"]) for r in kept}
    dropped = [r for r in dropped if str(r["id"]) not in kept_ids]
    previous = read_stats(stats_path(out_path))
    shard_stats = [read_stats(stats_path(p)) for p in shards]
    write_jsonl(out_path, kept)
    write_jsonl(dropped_path(out_path), dropped)
    run = {
        "tokens": sum(int(s.get("tokens", 0)) for s in shard_stats),
        "seconds": max([seconds, *(s.get("seconds", 0.0) for s in shard_stats)]),
    }
    sampling = getattr(config, "sampling", None)
    given = next((s for s in shard_stats if s), previous)  # what the shards (or an earlier merge) were run with
    stats = sample_stats(
        len(queries), kept, dropped, previous, run,
        scheme=sampling.scheme if sampling is not None else given.get("scheme"),
        n_constitutions=sampling.n_constitutions if sampling is not None else given.get("n_constitutions"),
        seed=given.get("seed"),
    )  # fmt: skip
    stats["processes"] = world
    atomic_write_json(stats_path(out_path), stats)
    for shard in shards:
        for path in (shard, dropped_path(shard), stats_path(shard)):
            path.unlink(missing_ok=True)
    return stats
