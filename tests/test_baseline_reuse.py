"""A run's baselines are generated once: iteration t copies iteration 0's baseline responses, MI responses and
scores (same model, prompts and settings within a run) instead of loading the baseline model again."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import make_tiny_model
from test_pipeline import tiny_config, write_config

import sami.models
from sami.cli import main
from sami.evaluation.baselines import copy_responses
from sami.io import JsonlStore, read_jsonl
from sami.layout import EvalLayout


def test_an_instruct_baseline_is_generated_once_per_run(tmp_path, tiny_model_dir, default_tokenizer, monkeypatch):
    other = tmp_path / "instruct"
    make_tiny_model(len(default_tokenizer), seed=1).save_pretrained(other)
    default_tokenizer.save_pretrained(other)
    loads: list[str] = []
    real = sami.models.load_model

    def spy(ref, *args, **kwargs):
        loads.append(str(ref))
        return real(ref, *args, **kwargs)

    monkeypatch.setattr(sami.models, "load_model", spy)
    config = tiny_config(tiny_model_dir)
    config["evaluation"]["baselines"] = {"instruct": str(other)}
    run = tmp_path / "run"
    assert main(["run", str(write_config(tmp_path / "cfg.yaml", config)), "--output-dir", str(run)]) == 0

    def side(t: int, name: str) -> list[dict]:
        return [r for r in read_jsonl(run / f"iter-{t}" / "eval" / "responses.jsonl") if r.get("side") == name]

    first = side(0, "instruct")
    assert len(first) == 3
    for t in (1, 2):
        assert side(t, "instruct") == first
        assert read_jsonl(run / f"iter-{t}/eval/mi_responses-instruct.jsonl") == read_jsonl(
            run / "iter-0/eval/mi_responses-instruct.jsonl"
        )
        scores = json.loads((run / f"iter-{t}/eval/scores.json").read_text())["baselines"]["instruct"]
        assert scores == json.loads((run / "iter-0/eval/scores.json").read_text())["baselines"]["instruct"]
        assert (run / f"iter-{t}/eval/judgments-instruct.jsonl").is_file()  # still judged at every iteration
    assert loads.count(str(other)) == 1, loads  # loaded at iteration 0 only (plus the judge's, a tiny model)
    metrics = json.loads((run / "iter-2/eval/metrics.json").read_text())
    assert "instruct" in metrics["baselines"] and "instruct" in metrics["win_rates"]


def test_a_foreign_folder_without_the_baseline_changes_nothing(tmp_path):
    """`copy_responses` from a folder that never evaluated the baseline copies nothing (and does not fail)."""
    store = JsonlStore(tmp_path / "responses.jsonl")
    copy_responses(store, "instruct", EvalLayout(Path(tmp_path / "nowhere")), {"q1"})
    assert store.records == []
