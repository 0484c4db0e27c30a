"""Query sources (JSON Lines, `datasets`, bundled) and per-iteration slices."""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from sami.data import BUNDLED_QUERIES, Query, QuerySource, iteration_slice, load_queries
from sami.errors import SamiInputError


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("rel", "rows"),
    [
        ("hh_rlhf/helpful_train.jsonl", 20000),
        ("hh_rlhf/harmless_train.jsonl", 20000),
        ("hh_rlhf/helpful_test.jsonl", 250),
        ("hh_rlhf/harmless_test.jsonl", 250),
        ("tldr/validation.jsonl", 250),
    ],
)
def test_shared_jsonl_files_load(shared_data, rel, rows):
    queries = load_queries(shared_data / rel)
    assert len(queries) == rows
    assert len({q.id for q in queries}) == rows
    assert all(isinstance(q.query, str) and q.query.strip() for q in queries)
    subset = "helpful" if "helpful" in rel else "harmless"
    tagged = load_queries(QuerySource(path=str(shared_data / rel), subset=subset, limit=5))
    assert [q.id for q in tagged] == [q.id for q in queries[:5]]
    assert all(q.meta["subset"] == subset for q in tagged)


@pytest.mark.parametrize(
    ("name", "rel", "subset"),
    [
        ("hh_helpful_train", "hh_rlhf/helpful_train.jsonl", "helpful"),
        ("hh_harmless_train", "hh_rlhf/harmless_train.jsonl", "harmless"),
        ("hh_helpful_test", "hh_rlhf/helpful_test.jsonl", "helpful"),
        ("hh_harmless_test", "hh_rlhf/harmless_test.jsonl", "harmless"),
        ("tldr_validation", "tldr/validation.jsonl", None),
    ],
)
def test_bundled_sets_are_slices_of_the_shared_data(shared_data, name, rel, subset):
    bundled = load_queries(name)
    shared = load_queries(shared_data / rel)
    assert [(q.id, q.query) for q in bundled] == [(q.id, q.query) for q in shared[: len(bundled)]]
    assert len(bundled) >= 200
    assert bundled[0].meta.get("subset") == subset and bundled[0].meta["source"] == name
    assert load_queries(QuerySource(bundled=name)) == bundled


def test_all_bundled_names_exist():
    assert set(BUNDLED_QUERIES) == {
        "hh_helpful_train",
        "hh_harmless_train",
        "hh_helpful_test",
        "hh_harmless_test",
        "tldr_validation",
    }


def test_field_mapping_nested_keys_and_numbered_ids(tmp_path):
    path = write_lines(
        tmp_path / "posts.jsonl",
        [{"post_id": 7, "info": {"post": "first"}, "subset": "helpful"}, {"post_id": "b", "info": {"post": "second"}}],
    )
    queries = load_queries(QuerySource(path=str(path), fields={"id": "post_id", "query": "info.post"}))
    assert queries == [
        Query("7", "first", {"subset": "helpful", "source": "posts"}),
        Query("b", "second", {"source": "posts"}),
    ]
    numbered = load_queries({"path": str(path), "fields": {"query": "info.post"}})
    assert [q.id for q in numbered] == ["posts-0", "posts-1"]
    with pytest.raises(SamiInputError, match=r"posts\.jsonl:1: no field 'text'"):
        load_queries(QuerySource(path=str(path), fields={"id": "post_id", "query": "text"}))


def test_local_datasets_sources_work_offline(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    rows = [{"uid": f"u{i}", "text": f"post number {i}"} for i in range(6)]
    data = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:4]), "validation": datasets.Dataset.from_list(rows[4:])}
    )
    data.save_to_disk(str(tmp_path / "saved"))
    mapping = {"id": "uid", "query": "text"}
    val = load_queries(QuerySource(path=str(tmp_path / "saved"), split="validation", fields=mapping))
    assert [q.id for q in val] == ["u4", "u5"]
    train = load_queries(QuerySource(dataset=str(tmp_path / "saved"), fields=mapping))
    assert [q.query for q in train] == [f"post number {i}" for i in range(4)]
    with pytest.raises(SamiInputError, match="split 'test' not found"):
        load_queries(QuerySource(path=str(tmp_path / "saved"), split="test", fields=mapping))

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "rows.parquet"))
    assert [q.id for q in load_queries(QuerySource(path=str(tmp_path / "rows.parquet"), fields=mapping))] == [
        f"u{i}" for i in range(6)
    ]
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "train.json").write_text(json.dumps(rows[:3]))
    by_name = load_queries(QuerySource(dataset="json", data_dir=str(tmp_path / "folder"), fields=mapping, limit=2))
    assert [q.id for q in by_name] == ["u0", "u1"]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "query": "fine"}\n\n{"id": "b", "query": oops}\n')
    with pytest.raises(SamiInputError, match=r"q\.jsonl:3: invalid JSON"):
        load_queries(path)
    path.write_text('{"id": "a", "query": "fine"}\n{"id": "b", "query": ""}\n')
    with pytest.raises(SamiInputError, match=r"q\.jsonl:2: field 'query' must be a non-empty string"):
        load_queries(path)
    path.write_text('{"id": "a", "query": "fine"}\n["not", "an", "object"]\n')
    with pytest.raises(SamiInputError, match=r"q\.jsonl:2: expected a JSON object"):
        load_queries(path)


def test_empty_or_missing_source_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(SamiInputError, match=r"empty\.jsonl: no queries found \(the source is empty\)"):
        load_queries(empty)
    with pytest.raises(SamiInputError, match="not found"):
        load_queries(tmp_path / "missing.jsonl")


def test_duplicate_ids_name_the_id_unless_deduplicated(tmp_path):
    records = [{"id": "x1", "query": "a"}, {"id": "x2", "query": "b"}, {"id": "x1", "query": "c"}]
    path = write_lines(tmp_path / "d.jsonl", records)
    with pytest.raises(SamiInputError, match=r"d\.jsonl:3: duplicate id 'x1' \(first seen at .*d\.jsonl:1\)"):
        load_queries(path)
    kept = load_queries(QuerySource(path=str(path), dedupe=True))
    assert [(q.id, q.query) for q in kept] == [("x1", "a"), ("x2", "b")]


def test_query_source_validation():
    with pytest.raises(ValidationError, match="exactly one of path, dataset or bundled"):
        QuerySource(path="a.jsonl", bundled="hh_helpful_train")
    with pytest.raises(ValidationError, match="exactly one"):
        QuerySource()
    with pytest.raises(ValidationError, match="unknown name"):
        QuerySource(bundled="nope")
    with pytest.raises(ValidationError, match="extra"):
        QuerySource(path="a.jsonl", colour="red")
    with pytest.raises(ValidationError, match="unknown Query field"):
        QuerySource(path="a.jsonl", fields={"query": "q", "text": "t"})
    with pytest.raises(SamiInputError, match="query source"):
        load_queries({"path": "a.jsonl", "limit": 0})


def test_iteration_slices_alternate_and_never_overlap():
    queries = [Query(str(i), f"q{i}", {}) for i in range(11)]
    first, second = iteration_slice(queries, 1), iteration_slice(queries, 2)
    assert {q.id for q in first}.isdisjoint({q.id for q in second})
    assert first + second == queries
    assert iteration_slice(queries, 3) == first and iteration_slice(queries, 4) == second
    capped = [iteration_slice(queries, t, size=3) for t in (1, 2)]
    assert [len(s) for s in capped] == [3, 3] and {q.id for q in capped[0]}.isdisjoint({q.id for q in capped[1]})
    thirds = [iteration_slice(queries, t, n_slices=3) for t in (1, 2, 3)]
    assert sum(thirds, []) == queries and all(len(s) in (3, 4) for s in thirds)
    assert iteration_slice(queries, 1) == iteration_slice(list(queries), 1)  # deterministic
    with pytest.raises(SamiInputError, match="iteration must be >= 1"):
        iteration_slice(queries, 0)
    with pytest.raises(SamiInputError, match="cannot be cut"):
        iteration_slice(queries[:1], 1)


def test_a_bad_row_of_a_datasets_file_is_named_by_its_row(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("id,query\na,hello\nb,\n", encoding="utf-8")
    with pytest.raises(SamiInputError, match=rf"^{re.escape(str(path))} row 1: field 'query' must be a non-empty"):
        load_queries({"path": str(path)})
