"""A run's baselines are generated once, each by a stage of its own (`baselines/NAME`): every iteration's judgments
and metrics read its folder, and a changed baseline setting reruns only that stage and the judgments, metrics and
report that read it, never a model's responses."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest
from conftest import make_tiny_model
from test_pipeline import tiny_config, write_config

import sami.manifest
import sami.models
from sami.cli import main
from sami.evaluation.baselines import copy_responses
from sami.evaluation.judgments import pair_digest
from sami.io import JsonlStore, read_jsonl
from sami.layout import EvalLayout
from sami.run_config import parse_config
from sami.stages import stage_keys, stage_table

EVALUATED = [f"iter-{t}/{s}" for t in (0, 1, 2) for s in ("responses", "judgments", "metrics")]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_folder(path: Path, tokenizer, seed: int, **overrides) -> Path:
    make_tiny_model(len(tokenizer), seed=seed, **overrides).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def instruct(tmp_path, default_tokenizer) -> Path:
    """A second tiny model folder (other weights than the policy's), the run's `instruct` baseline."""
    return model_folder(tmp_path / "instruct", default_tokenizer, seed=1)


def with_instruct(model_dir: Path, instruct: Path, **spec) -> dict:
    """The tiny run with baseline `instruct`, prompted as the policy is unless `spec` says otherwise (a random
    model answers a chat prompt with nothing)."""
    config = tiny_config(model_dir)
    config["evaluation"]["baselines"] = {"instruct": {"model": str(instruct), "style": "base", **spec}}
    return config


def test_a_changed_baseline_moves_only_its_stage_s_key_and_what_reads_it(tiny_model_dir, instruct):
    config = with_instruct(tiny_model_dir, instruct)
    keys = stage_keys(parse_config(config))
    assert list(keys).count("baselines/instruct") == 1 and list(keys)[1] == "baselines/instruct"
    assert keys["baselines/instruct"].upstream.keys() == {"constitutions"}
    for t in (0, 1, 2):
        assert "baselines/instruct" in keys[f"iter-{t}/judgments"].upstream
        assert "baselines/instruct" not in keys[f"iter-{t}/responses"].upstream

    def moved(changed: dict) -> list[str]:
        other = stage_keys(parse_config(changed))
        return [n for n in keys if other[n].hash != keys[n].hash]

    chat = with_instruct(tiny_model_dir, instruct, style="chat")  # a baseline setting
    assert moved(chat) == ["baselines/instruct", *[n for n in EVALUATED if "responses" not in n], "report"]
    adherence = copy.deepcopy(config)  # an evaluated model's own check: not the baseline's
    adherence["evaluation"]["adherence"] = False
    assert "baselines/instruct" not in moved(adherence) and "iter-1/responses" in moved(adherence)
    budget = copy.deepcopy(config)  # a generation setting both read
    budget["evaluation"]["max_new_tokens"] = 5
    assert {"baselines/instruct", "iter-0/responses"} <= set(moved(budget))
    policy = copy.deepcopy(config)  # π_0 is not the baseline's input
    policy["model"]["policy"] = str(instruct)
    assert "baselines/instruct" not in moved(policy)
    (instruct / "config.json").write_text((instruct / "config.json").read_text() + "\n")  # its model's files
    assert moved(config) == ["baselines/instruct", *[n for n in EVALUATED if "responses" not in n], "report"]
    # without baselines the responses stages hash what they hashed before the baselines had stages of their own
    plain = parse_config(tiny_config(tiny_model_dir))
    assert not [n for n in stage_table(plain, contents=False) if n.startswith("baselines/")]


def test_an_instruct_baseline_is_generated_once_and_a_changed_one_reruns_only_its_stage(
    tmp_path, tiny_model_dir, instruct, default_tokenizer, monkeypatch
):
    loads: list[str] = []
    real = sami.models.load_model

    def spy(ref, *args, **kwargs):
        loads.append(str(ref))
        return real(ref, *args, **kwargs)

    monkeypatch.setattr(sami.models, "load_model", spy)
    config = with_instruct(tiny_model_dir, instruct)
    run = tmp_path / "run"
    assert main(["run", str(write_config(tmp_path / "cfg.yaml", config)), "--output-dir", str(run)]) == 0

    folder = EvalLayout(run / "baselines" / "instruct")
    theirs = read_jsonl(folder.responses)
    assert len(theirs) == 3 and {r["side"] for r in theirs} == {"instruct"}
    assert len(read_jsonl(folder.baseline_mi_responses("instruct"))) == 3
    assert loads.count(str(instruct)) == 1, loads  # one stage loaded it, once per run
    manifest = json.loads((run / "manifest.json").read_text())["stages"]
    assert "baselines/instruct" in manifest
    assert len(json.loads(folder.scores.read_text())["baselines"]["instruct"]) == 3  # its MI, scored once
    reported = []
    for t in (0, 1, 2):
        ev = EvalLayout(run / f"iter-{t}" / "eval")
        assert not [r for r in read_jsonl(ev.responses) if r["side"] == "instruct"]  # neither generated nor copied
        assert not ev.baseline_mi_responses("instruct").exists()
        assert "instruct" not in json.loads(ev.scores.read_text()).get("baselines", {})
        assert len(read_jsonl(ev.judgments("instruct"))) == 3  # judged at every iteration, against its folder
        metrics = json.loads(ev.metrics.read_text())
        reported.append(metrics["baselines"]["instruct"])  # its MI and lengths, from its folder
        assert "instruct" in metrics["win_rates"]
    assert reported[0]["mean_length"] and reported[0] == reported[1] == reported[2]

    kept = {p: digest(p) for p in run.rglob("*.jsonl") if p.parent.name == "eval" and "instruct" not in p.name}
    kept |= {p: digest(p) for p in run.rglob("scores.json") if p.parent.name == "eval"}
    started: list[str] = []
    original = sami.manifest.Manifest.start
    monkeypatch.setattr(
        sami.manifest.Manifest, "start", lambda self, stage, **kw: started.append(stage) or original(self, stage, **kw)
    )
    other = model_folder(
        tmp_path / "instruct-2", default_tokenizer, seed=2, initializer_range=1.0
    )  # writes words, not "::::::"
    changed = with_instruct(tiny_model_dir, other)
    assert main(["run", str(write_config(tmp_path / "changed.yaml", changed)), "--output-dir", str(run)]) == 0
    assert started == ["baselines/instruct", *[n for n in EVALUATED if "responses" not in n], "report"]
    assert {p: digest(p) for p in kept} == kept  # the models' responses and scores: not one byte changed
    again = {r["query_id"]: r["response"] for r in read_jsonl(folder.responses)}
    assert again != {r["query_id"]: r["response"] for r in theirs}
    for t in (0, 1, 2):  # every verdict judged the new responses (none kept from the old baseline's)
        ev = EvalLayout(run / f"iter-{t}" / "eval")
        model = {r["query_id"]: r["response"] for r in read_jsonl(ev.responses) if r["side"] == "model"}
        verdicts = read_jsonl(ev.judgments("instruct"))
        assert len(verdicts) == 3
        assert all(v["pair_sha256"] == pair_digest(model[v["id"]], again[v["id"]]) for v in verdicts)


def test_a_foreign_folder_without_the_baseline_changes_nothing(tmp_path):
    """`copy_responses` from a folder that never evaluated the baseline copies nothing (and does not fail)."""
    store = JsonlStore(tmp_path / "responses.jsonl")
    copy_responses(store, "instruct", EvalLayout(Path(tmp_path / "nowhere")), {"q1"})
    assert store.records == []
