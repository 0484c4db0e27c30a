"""The evaluation's responses step split over the processes of a launch (`sami.evaluation.parallel`).

The 2-process runs are compared with a 1-process `accelerate launch` of the same stage, so both sides run one
thread per process (`sami.launch.launch_env`): the comparison is then about the split, not about thread counts.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_distributed import finish, launch
from test_pipeline import tiny_config, write_config
from transformers import AutoModelForCausalLM

from sami.constitutions import load_constitutions
from sami.evaluation.context import EvaluationInputs, prepare
from sami.evaluation.parallel import ShardedStore, chunks_of, merged_records, score_blocks
from sami.evaluation.settings import EvaluationSettings
from sami.io import JsonlStore, read_jsonl
from sami.launch import accelerate_command, launch_env
from sami.layout import shard_path
from sami.run_config import load_config
from sami.stage_parts import StageParts, config_hash

STAGE = ["stage", "iter-0/responses", "--no-progress"]
FILES = ("responses.jsonl", "mi_responses.jsonl", "contrast_responses.jsonl")


def test_chunks_of_splits_a_one_process_runs_chunks():
    items = list(range(7))
    assert chunks_of(items, 2, 0, 2) == [0, 1, 4, 5]
    assert chunks_of(items, 2, 1, 2) == [2, 3, 6]
    assert sorted(chunks_of(items, 3, 0, 3) + chunks_of(items, 3, 1, 3) + chunks_of(items, 3, 2, 3)) == items
    assert chunks_of(items, 2, 0, 1) == items


def test_merged_records_keep_a_one_process_runs_order():
    order = {"model:a": 0, "model:b": 1, "model:c": 2}
    main = [{"id": "sami:a"}, {"id": "model:c", "x": 1}]
    extra = [{"id": "model:b"}, {"id": "model:a"}, {"id": "model:c", "x": 2}]
    merged = merged_records(main, extra, order)
    assert [r["id"] for r in merged] == ["sami:a", "model:a", "model:b", "model:c"]
    assert merged[-1]["x"] == 1  # the first record of an id wins


def test_score_blocks_are_the_forward_batches_of_one_process():
    records = [
        {"id": str(i), "constitutions": [0] * c, "responses": ["x" if i != 3 else ""] * c}
        for i, c in enumerate([2, 4, 2, 2, 4, 2])
    ]
    blocks, unscored = score_blocks(records, 2)
    assert [[r["id"] for r in b] for b in blocks] == [["0", "2"], ["5"], ["1", "4"]]
    assert [r["id"] for r in unscored] == ["3"]


def test_a_sharded_store_writes_its_own_shard_and_reads_every_rank(tmp_path):
    path = tmp_path / "responses.jsonl"
    main = JsonlStore(path)
    main.add({"id": "a"})
    main.flush()
    other = JsonlStore(shard_path(path, 1))
    other.add({"id": "b"})
    other.flush()
    store = ShardedStore(path, 0)
    assert "a" in store and "b" in store and not store.add({"id": "b"})
    assert store.add({"id": "c"})
    store.flush()
    assert read_jsonl(shard_path(path, 0)) == [{"id": "c"}] and len(read_jsonl(path)) == 1
    other.add({"id": "d"})
    other.flush()
    store.refresh()
    assert [r["id"] for r in store.records] == ["a", "b", "d", "c"]


def test_device_map_reaches_from_pretrained_and_moves_no_stage_key(tmp_path, tiny_model_dir, monkeypatch):
    seen = []
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device_map"))
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    for device_map in (None, "auto"):
        settings = EvaluationSettings(queries="hh_helpful_test", constitutions="hh_opus", device_map=device_map)
        ev = prepare(settings, str(tiny_model_dir), tmp_path, EvaluationInputs(judge=False))
        assert ev.get_model().device.type == "cpu"
    assert seen == [None, "auto"]

    cfg = tiny_config(tiny_model_dir)
    plain = load_config(write_config(tmp_path / "a.yaml", cfg))
    cfg["evaluation"]["device_map"] = "auto"
    mapped = load_config(write_config(tmp_path / "b.yaml", cfg))
    assert config_hash(plain) == config_hash(mapped)
    assert StageParts.of(plain, contents=False).responses(0) == StageParts.of(mapped, contents=False).responses(0)


# ---- under accelerate launch ------------------------------------------------------------------------------------
DYING_RANK = """
import os
import sys

import sami.generation.hf as hf

generate = hf.HFGenerator.generate
calls = []


def dying_generate(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2 and os.environ.get("RANK") == "1":
        os._exit(9)
    return generate(*args, **kwargs)


hf.HFGenerator.generate = dying_generate
from sami.cli import main

sys.exit(main(sys.argv[1:]))
"""


def _eval_run(tmp_path: Path, model_dir: Path, name: str) -> Path:
    """A run folder holding what `sami stage iter-0/responses` reads; 5 queries in chunks of 2 (the last one short)
    and batches of 2 (generation and scoring: 3 scoring batches per file, so both ranks score); prompts of different
    lengths share a batch, so a split that changed the batches (the padding) could show."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    cfg = tiny_config(model_dir)
    cfg["data"]["eval"] = [{"bundled": "hh_helpful_test", "subset": "helpful", "limit": 5}]
    cfg["evaluation"].update(chunk_size=2, batch_size=2)
    write_config(run_dir / "config.yaml", cfg)
    load_constitutions("hh_opus").save(run_dir / "constitutions.json")
    return run_dir


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir) -> Path:
    run_dir = _eval_run(tmp_path_factory.mktemp("one"), tiny_model_dir, "one")
    finish(launch([*STAGE, "--run-dir", str(run_dir)], num_processes=1), timeout=600)
    return run_dir / "iter-0" / "eval"


def _same_scores(a: object, b: object, path: str = "") -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-5), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            _same_scores(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same_scores(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def _assert_same(one: Path, two: Path) -> None:
    for name in FILES:
        assert (two / name).read_text() == (one / name).read_text(), name
    _same_scores(json.loads((two / "scores.json").read_text()), json.loads((one / "scores.json").read_text()))
    assert not list(two.glob("*.rank*.jsonl"))  # the shards are merged and gone


@pytest.mark.slow
def test_two_processes_write_the_one_process_responses_and_scores(tmp_path, tiny_model_dir, one_process):
    run_dir = _eval_run(tmp_path, tiny_model_dir, "two")
    finish(launch([*STAGE, "--run-dir", str(run_dir)]), timeout=600)
    two = run_dir / "iter-0" / "eval"
    _assert_same(one_process, two)
    assert len(read_jsonl(two / "responses.jsonl")) == 5
    (launched,) = json.loads((two / "responses.ranks.json").read_text())["launches"]
    assert launched["processes"] == 2
    by_rank = {r["rank"]: r for r in launched["ranks"]}
    # chunks of 2 of 5 queries: rank 0 takes chunks 0 and 2, rank 1 chunk 1
    assert by_rank[0]["responses"] == ["model:" + i for i in _ids(two)[:2] + _ids(two)[4:]]
    assert by_rank[1]["responses"] == ["model:" + i for i in _ids(two)[2:4]]
    for r in (0, 1):
        assert by_rank[r]["mi_responses"] and by_rank[r]["contrast"] and by_rank[r]["scored"] > 0
    scores = json.loads((two / "scores.json").read_text())
    assert by_rank[0]["scored"] + by_rank[1]["scored"] == len(scores["intrinsic"]) + sum(
        len(v) for v in scores["contrast"].values()
    )


def _ids(folder: Path) -> list[str]:
    return [r["query_id"] for r in read_jsonl(folder / "responses.jsonl")]


@pytest.mark.slow
def test_a_killed_launchs_shards_are_reused(tmp_path, tiny_model_dir, one_process):
    run_dir = _eval_run(tmp_path, tiny_model_dir, "killed")
    two = run_dir / "iter-0" / "eval"
    dying = tmp_path / "dying_rank.py"
    dying.write_text(DYING_RANK)
    cmd = accelerate_command([*STAGE, "--run-dir", str(run_dir)], num_processes=2, cpu=True)
    cmd = [*cmd[: cmd.index("-m", 3)], str(dying), *cmd[cmd.index("-m", 3) + 2 :]]
    env = {**os.environ, **launch_env(cpu=True)}
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert crashed.returncode != 0
    # rank 1 died in its second generate call, after writing its first chunk of model responses
    assert [r["query_id"] for r in read_jsonl(two / "responses.rank1.jsonl")] == _ids(one_process)[2:4]
    assert not (two / "scores.json").exists()

    finish(launch([*STAGE, "--run-dir", str(run_dir)]), timeout=600)
    _assert_same(one_process, two)
    (launched,) = json.loads((two / "responses.ranks.json").read_text())["launches"]
    assert launched["merged_from_earlier_shards"]["responses.jsonl"] >= 2  # rank 1's chunk, not generated again
    assert not any(r["responses"] for r in launched["ranks"])
