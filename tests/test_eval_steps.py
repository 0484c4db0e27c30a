"""The evaluation as file-to-file steps: responses (every model forward) -> judgments -> metrics (files only)."""

from __future__ import annotations

import json

import pytest

from sami.data import load_queries
from sami.evaluation.context import EvaluationInputs
from sami.evaluation.evaluate import run_evaluation
from sami.evaluation.settings import EvaluationSettings


@pytest.fixture
def evaluated(tmp_path, tiny_model, default_tokenizer):
    """A finished responses step (intrinsic scores included) of the tiny model on 3 queries, with a baseline."""
    queries = load_queries("hh_harmless_test")[:3]
    settings = EvaluationSettings(constitutions="hh_opus", max_new_tokens=3, device="cpu")
    given = {q.id: f"Baseline answer {i}." for i, q in enumerate(queries)}
    common = EvaluationInputs(queries=queries, baselines={"base": str(tmp_path / "never-loaded")})
    run_evaluation(
        settings, "m", tmp_path,
        EvaluationInputs(queries=queries, baselines=common.baselines, model=tiny_model, tokenizer=default_tokenizer,
                         baseline_responses={"base": given}),
        steps=("responses",),
    )  # fmt: skip
    return tmp_path, settings, common


def _bytes(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_responses_step_writes_scores_and_no_metrics(evaluated):
    out, _, _ = evaluated
    assert not (out / "metrics.json").exists() and not list(out.glob("judgments-*"))
    scores = json.loads((out / "scores.json").read_text())
    assert scores["eos"] == "never" and scores["mi"] == "sign_patterns" and len(scores["intrinsic"]) == 3
    assert all(isinstance(v["mi"], float) and len(v["lengths"]) == 4 for v in scores["intrinsic"].values())


def test_rerun_with_all_files_loads_nothing_and_changes_no_byte(evaluated, monkeypatch):
    out, settings, common = evaluated
    before = _bytes(out)

    def no_loading(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded")

    monkeypatch.setattr("sami.models.load_model", no_loading)
    monkeypatch.setattr("sami.models.load_tokenizer", no_loading)
    assert run_evaluation(settings, str(out / "missing-model"), out, common, steps=("responses",)) is None
    assert _bytes(out) == before


def test_metrics_step_reads_files_only(evaluated, monkeypatch, tiny_model, default_tokenizer):
    out, settings, common = evaluated
    from sami.evaluation.metrics import aggregate_scores

    def no_loading(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded")

    monkeypatch.setattr("sami.models.load_model", no_loading)
    monkeypatch.setattr("sami.models.load_tokenizer", no_loading)
    metrics = run_evaluation(settings, str(out / "no-such-model"), out, common, steps=("metrics",))
    assert json.loads((out / "metrics.json").read_text()) == metrics
    scores = json.loads((out / "scores.json").read_text())["intrinsic"]
    mi = [v["mi"] for v in scores.values()]
    assert metrics["mi"] == pytest.approx(sum(mi) / 3) and metrics["n_queries"] == 3
    records = [json.loads(line) for line in (out / "mi_responses.jsonl").read_text().splitlines()]
    expected = aggregate_scores(scores, records)
    assert metrics["mean_length"] == expected["mean_length"] and metrics["mi_bound"] == expected["mi_bound"]
    assert metrics["mean_length_tokens"] == expected["mean_length_tokens"]
    pos_chars = [len(r["responses"][0]) for r in records]
    assert metrics["mean_length"]["positive"] == pytest.approx(sum(pos_chars) / 3)  # characters
    assert metrics["mean_length_tokens"]["positive"] == pytest.approx(
        sum(scores[r["id"]]["lengths"][0] for r in records) / 3
    )
    assert metrics["win_rates"] == {}  # not judged yet: no judgments file


def test_scores_equal_intrinsic_metrics_in_one_go(evaluated, tiny_model, default_tokenizer):
    """The per-query scores aggregate to what `intrinsic_metrics` reports over all queries at once."""
    from sami.evaluation.metrics import intrinsic_metrics
    from sami.prompts import get_template

    out, _, _ = evaluated
    records = [json.loads(line) for line in (out / "mi_responses.jsonl").read_text().splitlines()]
    direct = intrinsic_metrics(
        tiny_model, default_tokenizer, records, template=get_template("dialogue", "base"), eos="never"
    )
    inputs = EvaluationInputs(queries=load_queries("hh_harmless_test")[:3], baselines={})
    metrics = run_evaluation(EvaluationSettings(constitutions="hh_opus"), "x", out, inputs, steps=("metrics",))
    for key in ("mi", "mi_sem", "mi_bound", "sami_loss", "accuracy"):
        assert metrics[key] == pytest.approx(direct[key], rel=1e-4, abs=1e-5), key
