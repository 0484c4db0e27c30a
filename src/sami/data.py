"""Queries: where they come from (JSON Lines, a `datasets` dataset, the bundled slice) and per-iteration slices.

A query source yields `Query(id, query, meta)`. `meta["subset"]` ("helpful"/"harmless") is what the
`paper-dialogue` constitution scheme reads; `meta["source"]` says where the query came from.

Bundled sources (see `sami/assets/ATTRIBUTION.md`): hh_helpful_train, hh_harmless_train (300 each),
hh_helpful_test, hh_harmless_test (the paper's 250 + 250 evaluation queries), tldr_validation (the paper's 250
evaluation posts).

`QuerySource.transform` reads the hub's own formats (HH-RLHF transcripts, summarize-from-feedback rows, TRL's
prompt formats): `sami.query_formats`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sami.errors import SamiInputError
from sami.io import iter_jsonl
from sami.query_formats import TRANSFORM_FUNCTIONS, TRANSFORMS, QueryTransform, Skip

log = logging.getLogger(__name__)

# name -> (file under assets/data, subset written to meta["subset"])
BUNDLED_QUERIES: dict[str, tuple[str, str | None]] = {
    "hh_helpful_train": ("hh_helpful_train.jsonl", "helpful"),
    "hh_harmless_train": ("hh_harmless_train.jsonl", "harmless"),
    "hh_helpful_test": ("hh_helpful_test.jsonl", "helpful"),
    "hh_harmless_test": ("hh_harmless_test.jsonl", "harmless"),
    "tldr_validation": ("tldr_validation.jsonl", None),
}
_JSONL_SUFFIXES = (".jsonl", ".ndjson")
_COMPRESSED_JSON = (".jsonl.gz", ".json.gz", ".jsonl.bz2", ".json.bz2", ".jsonl.zst", ".json.zst")  # as the hub ships
_DATASETS_FORMATS = {".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


@dataclass(frozen=True)
class Query:
    """One query (an HH-RLHF first human turn, a Reddit post, ...) with a unique id."""

    id: str
    query: str
    meta: dict = field(default_factory=dict, hash=False)


class QuerySource(BaseModel):
    """Where queries come from: exactly one of `path`, `dataset` or `bundled`.

    `fields` maps the Query fields to the record's keys, e.g. `{"id": "post_id", "query": "info.post"}`
    (a dotted key reads a nested field). Without an "id" entry (or with `id: null`) ids are
    `<source name>-<row index>`. A record's own "subset" key, or a "meta" mapping, is copied into
    `Query.meta`; the source's `subset` overrides it.

    `transform` reads a format of the field instead of `fields["query"]` (`sami.query_formats`): HH-RLHF
    transcripts, summarize-from-feedback rows, TRL's prompt formats. With a transform, records without
    `fields["id"]` are numbered (the formats have no id; `tldr` uses `info.id`).
    """

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None,
        description="local file or folder: JSON Lines (.jsonl), a .json/.parquet/.csv/.arrow file read with "
        "`datasets`, or a folder written by `datasets` save_to_disk",
    )
    dataset: str | None = Field(
        None, description="a `datasets` dataset name or local dataset folder for `datasets.load_dataset`"
    )
    config_name: str | None = Field(None, description="the dataset configuration name, if it has several")
    split: str = Field("train", description="dataset split (for `dataset`, and for DatasetDict folders)")
    data_dir: str | None = Field(None, description="`data_dir` passed to `datasets.load_dataset`")
    revision: str | None = Field(
        None,
        description="`revision` passed to `datasets.load_dataset` (e.g. refs/convert/parquet: the hub's parquet "
        "copy of a dataset that ships a loading script)",
    )
    bundled: str | None = Field(None, description=f"a bundled query set: {', '.join(BUNDLED_QUERIES)}")
    fields: dict[str, str | None] = Field(
        default_factory=lambda: {"id": "id", "query": "query"},
        description='map Query fields to record keys, e.g. {"id": "post_id", "query": "info.post"}',
    )
    transform: QueryTransform | None = Field(
        None,
        description="read the query from a format of the field instead of fields.query: "
        + "; ".join(f"{k}: {v}" for k, v in TRANSFORMS.items()),
    )
    subset: str | None = Field(None, description='written to meta["subset"] (e.g. "helpful" or "harmless")')
    limit: int | None = Field(None, gt=0, description="keep only the first `limit` queries")
    dedupe: bool = Field(False, description="keep the first of several records with the same id instead of failing")

    @model_validator(mode="after")
    def _one_source(self) -> QuerySource:
        given = [k for k in ("path", "dataset", "bundled") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, dataset or bundled (got {given or 'none'})")
        if self.bundled and self.bundled not in BUNDLED_QUERIES:
            raise ValueError(f"bundled: unknown name {self.bundled!r}; choose from {list(BUNDLED_QUERIES)}")
        unknown = sorted(set(self.fields) - {"id", "query"})
        if unknown:
            raise ValueError(f"fields: unknown Query field(s) {unknown}; map only 'id' and 'query'")
        if not self.fields.get("query"):
            raise ValueError("fields: 'query' must name the record key holding the query text")
        return self

    @property
    def name(self) -> str:
        """A short label for meta["source"] and generated ids."""
        if self.bundled:
            return self.bundled
        ref = self.path or self.dataset or ""
        stem = Path(ref.rstrip("/")).name
        for suffix in (*_COMPRESSED_JSON, *_JSONL_SUFFIXES, *_DATASETS_FORMATS):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        if self.dataset:  # one hub dataset read twice (helpful-base, harmless-base) gives distinct ids
            stem = "-".join(
                part.strip("/").replace("/", "-") for part in (stem, self.config_name, self.data_dir) if part
            )
        return stem or ref


def bundled_queries_path(name: str) -> Path:
    """Path of a bundled JSON Lines file."""
    if name not in BUNDLED_QUERIES:
        raise SamiInputError(f"unknown bundled query set {name!r}; choose from {list(BUNDLED_QUERIES)}")
    return Path(__file__).parent / "assets" / "data" / BUNDLED_QUERIES[name][0]


def _lookup(record: dict, key: str) -> Any:
    value: Any = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(key)
        value = value[part]
    return value


def _rows(label: str, rows) -> tuple[str, Any]:
    """(label, (location, record) per row) for rows a `datasets` loader gave."""
    return label, ((f"{label} row {i}", r) for i, r in enumerate(rows))


def _iter_records(source: QuerySource) -> tuple[str, Any]:
    """(label used in errors, iterable of (location, record)) for the source."""
    if source.bundled:
        path = bundled_queries_path(source.bundled)
        return str(path), ((f"{path}:{n}", r) for n, r in iter_jsonl(path))
    if source.path:
        path = Path(source.path).expanduser()
        if not path.exists():
            raise SamiInputError(f"{path}: query file not found")
        if path.is_file() and path.suffix.lower() in _JSONL_SUFFIXES:
            return str(path), ((f"{path}:{n}", r) for n, r in iter_jsonl(path))
        if path.is_file() and path.name.lower().endswith(_COMPRESSED_JSON):  # e.g. hh-rlhf's train.jsonl.gz
            return _rows(str(path), _load_dataset("json", data_files=str(path), split="train"))
        if path.is_file() and path.suffix.lower() in _DATASETS_FORMATS:
            fmt = _DATASETS_FORMATS[path.suffix.lower()]
            return _rows(str(path), _load_dataset(fmt, data_files=str(path), split="train"))
        if path.is_dir():
            return _rows(str(path), _load_from_disk(path, source.split))
        raise SamiInputError(
            f"{path}: unsupported query file; use .jsonl(.gz), .json, .parquet, .csv or a save_to_disk folder"
        )
    assert source.dataset
    local = Path(source.dataset).expanduser()
    if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
        return _rows(str(local), _load_from_disk(local, source.split))  # a save_to_disk folder given as `dataset`
    rows = _load_dataset(
        source.dataset, name=source.config_name, split=source.split, data_dir=source.data_dir, revision=source.revision
    )
    return _rows(f"{source.dataset}[{source.split}]", rows)


def _load_dataset(path: str, **kwargs: Any):
    # datasets (~0.9 s to import, pyarrow); sami.data is read by light commands (config, report, check)
    import datasets

    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return datasets.load_dataset(path, **kwargs)
    except (FileNotFoundError, ValueError, ConnectionError, datasets.exceptions.DatasetNotFoundError) as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise SamiInputError(f"{path}: could not load dataset ({type(e).__name__}: {first_line})") from None


def _load_from_disk(path: Path, split: str):
    # datasets (~0.9 s to import, pyarrow); sami.data is read by light commands (config, report, check)
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except FileNotFoundError as e:
        raise SamiInputError(f"{path}: not a `datasets` save_to_disk folder ({str(e).splitlines()[0]})") from None
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise SamiInputError(f"{path}: split {split!r} not found (have {list(data)})")
        data = data[split]
    return data


def load_queries(source: QuerySource | dict | str | os.PathLike) -> list[Query]:
    """Load queries from a `QuerySource`, a dict of its fields, a bundled name or a file path.

    Errors name the file and line (or row): a malformed line, a record without the query field, an empty
    query, a duplicate id; an empty source is an error too.
    """
    if isinstance(source, dict):
        try:
            source = QuerySource.model_validate(source)
        except ValueError as e:
            raise SamiInputError(f"query source: {e}") from None
    elif not isinstance(source, QuerySource):
        ref = str(source)
        if ref in BUNDLED_QUERIES and not Path(ref).exists():
            source = QuerySource(bundled=ref)
        else:
            source = QuerySource(path=ref)

    label, records = _iter_records(source)
    subset = source.subset or (BUNDLED_QUERIES[source.bundled][1] if source.bundled else None)
    id_key, query_key = source.fields.get("id"), source.fields["query"]
    queries: list[Query] = []
    seen: dict[str, str] = {}
    transform = TRANSFORM_FUNCTIONS[source.transform] if source.transform else None
    skipped: dict[str, int] = {}
    for index, (where, record) in enumerate(records):
        system, qid = None, None
        if transform is not None:
            try:
                text, system, qid = transform(record)
            except Skip as e:
                skipped[str(e)] = skipped.get(str(e), 0) + 1
                continue
            except ValueError as e:
                raise SamiInputError(f"{where}: transform {source.transform}: {e}") from None
            if qid is not None and qid in seen and source.transform == "tldr":
                continue  # summarize-from-feedback repeats a post once per comparison
        else:
            try:
                text = _lookup(record, query_key)
            except KeyError:
                raise SamiInputError(f"{where}: no field {query_key!r} (set fields.query to the right key)") from None
            if not isinstance(text, str) or not text.strip():
                raise SamiInputError(f"{where}: field {query_key!r} must be a non-empty string")
        if qid is None and id_key and not (transform is not None and _missing(record, id_key)):
            try:
                raw_id = _lookup(record, id_key)
            except KeyError:
                raise SamiInputError(f"{where}: no field {id_key!r} (set fields.id, or null to number rows)") from None
            if not isinstance(raw_id, str | int) or isinstance(raw_id, bool) or str(raw_id) == "":
                raise SamiInputError(f"{where}: field {id_key!r} must be a non-empty string or integer")
            qid = str(raw_id)
        elif qid is None:
            qid = f"{source.name}-{index}"
        if qid in seen:
            if source.dedupe:
                continue
            raise SamiInputError(f"{where}: duplicate id {qid!r} (first seen at {seen[qid]})")
        seen[qid] = where
        meta: dict[str, Any] = dict(record["meta"]) if isinstance(record.get("meta"), dict) else {}
        if isinstance(record.get("subset"), str):
            meta["subset"] = record["subset"]
        if subset:
            meta["subset"] = subset
        meta["source"] = source.name
        if system:
            meta["system"] = system
        queries.append(Query(qid, text, meta))
        if source.limit and len(queries) >= source.limit:
            break
    for reason, count in skipped.items():
        log.warning("%s: %d row(s) skipped by transform %s (%s rows)", label, count, source.transform, reason)
    if not queries:
        raise SamiInputError(f"{label}: no queries found (the source is empty)")
    return queries


def _missing(record: dict, key: str) -> bool:
    try:
        _lookup(record, key)
    except KeyError:
        return True
    return False


def iteration_slice(queries: list[Query], iteration: int, n_slices: int = 2, size: int | None = None) -> list[Query]:
    """The queries of training iteration `iteration` (1-based): slice `(iteration - 1) % n_slices`.

    The list is cut, in its given order, into `n_slices` contiguous disjoint parts of near-equal size
    (the paper alternates two halves: iterations 1, 3, ... use the first, 2, 4, ... the second).
    `size` keeps only the first `size` queries of the slice, so slices never overlap.
    """
    if iteration < 1:
        raise SamiInputError(f"iteration must be >= 1 (iteration 0 is the untrained model), got {iteration}")
    if n_slices < 1:
        raise SamiInputError(f"n_slices must be >= 1, got {n_slices}")
    if size is not None and size < 1:
        raise SamiInputError(f"slice size must be >= 1, got {size}")
    if len(queries) < n_slices:
        raise SamiInputError(f"{len(queries)} queries cannot be cut into {n_slices} non-empty slices")
    k = (iteration - 1) % n_slices
    start, stop = k * len(queries) // n_slices, (k + 1) * len(queries) // n_slices
    part = list(queries[start:stop])
    return part[:size] if size is not None else part
