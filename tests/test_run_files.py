"""Typed run files (`sami.run_files`) and the owner of scores.json (`sami.evaluation.scores.ScoresFile`): round
trips, files of older runs that lack later keys, and one-line refusals naming the file and the field."""

from __future__ import annotations

import json

import pytest
import yaml

from sami.errors import SamiInputError
from sami.evaluation.scores import ScoresFile
from sami.evaluation.settings import EvaluationSettings
from sami.report.summary import build_summary
from sami.run_files import Metrics, Scores, Summary, dump_run_file, parse_run_file, read_run_file

QUERY = {"mi": 1.5, "mi_bound": 0.25, "sami_loss": 0.5, "accuracy": 1.0, "lengths": [3, 4]}


def test_scores_file_round_trip_and_updates(tmp_path):
    path = tmp_path / "scores.json"
    file = ScoresFile(path)
    assert dump_run_file(file.read()) == {}  # absent: empty
    written = {"eos": "never", "mi": "sign_patterns", "intrinsic": {"q1": QUERY}, "contrast": {"brief": {"q1": 0.5}},
               "baselines": {}}  # fmt: skip
    file.write(Scores.model_validate(written))
    assert json.loads(path.read_text()) == written  # the same keys and values, no added ones
    assert file.read().intrinsic["q1"].mi == 1.5
    file.add_baseline("base", {"q1": QUERY})
    file.skip_baseline("api", "x: no such model")
    data = json.loads(path.read_text())
    assert data["baselines"] == {"base": {"q1": QUERY}} and data["baselines_skipped"] == {"api": "x: no such model"}
    assert data["intrinsic"] == written["intrinsic"] and data["contrast"] == written["contrast"]
    assert file.matches(EvaluationSettings(mi="sign_patterns"))
    assert not file.matches(EvaluationSettings(mi="training_pairs"))


def test_older_scores_file_without_later_keys_reads(tmp_path):
    """A scores.json written before sign patterns, baselines and skipped baselines: the MI kind was training pairs."""
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"eos": "generated", "intrinsic": {"q1": QUERY}, "contrast": {}}))
    scores = ScoresFile(path).read()
    assert scores.mi == "training_pairs" and scores.baselines == {} and scores.baselines_skipped == {}
    assert ScoresFile(path).matches(EvaluationSettings(mi="training_pairs"))
    assert "mi" not in dump_run_file(scores)  # read back as it was


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"intrinsic": {"q1": {"mi": "high"}}}', r"scores\.json: intrinsic\.q1\.mi: expected a number"),
        ("[1, 2]", r"scores\.json: expected a JSON object, got list"),
        ("{not json", r"scores\.json: unreadable"),
    ],
)
def test_malformed_scores_file_is_refused_in_one_line(tmp_path, text, message):
    path = tmp_path / "scores.json"
    path.write_text(text)
    with pytest.raises(SamiInputError, match=message) as caught:
        ScoresFile(path).read()
    assert "\n" not in str(caught.value)


def _run(tmp_path, metrics: dict):
    run = tmp_path / "run"
    (run / "iter-0" / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "r", "iterations": {"count": 0}}))
    (run / "iter-0" / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_older_metrics_file_without_later_keys_reads(tmp_path):
    """A metrics.json from before MI kinds, token lengths, baselines and subsets."""
    old = {"model": "iter-0", "n_queries": 3, "n_constitutions": 2, "mi": 0.5, "mi_bound": 0.1,
           "mean_length": {"positive": 10.0, "negative": 12.0}, "win_rates": {}}  # fmt: skip
    metrics = read_run_file(Metrics, _run(tmp_path, old) / "iter-0" / "eval" / "metrics.json")
    assert metrics.mi_kind is None and metrics.subsets == {} and metrics.baselines == {}
    assert dump_run_file(metrics) == {**old, "mean_length": {**old["mean_length"]}}  # keys kept as written
    it = build_summary(tmp_path / "run")["iterations"][0]
    assert it["mi"] == 0.5 and it["mi_kind"] is None and it["subsets"] == {} and it["mean_length_tokens"] == {}
    assert it["mean_length"] == {"positive": 10.0, "negative": 12.0, "by_constitution": {}, "by_principle": {}}
    assert it["missing"] == []


def test_metrics_written_through_the_model_keep_their_keys_and_values():
    """What the metrics step writes: every key it sets, `{}` lengths written back as `{}`, NaN-free values kept."""
    data = {"model": "m", "n_constitutions": [2, 4], "n_sign_patterns": None, "mi": 0.25, "mean_length": {},
            "mean_length_tokens": {"positive": 3.0, "negative": None, "by_constitution": {"+a": 3.0},
                                   "by_principle": {"a": {"positive": 3.0, "negative": None}}},
            "win_rates": {"base": {"win_rate": 0.5, "n": 2}}, "judge": None,
            "subsets": {"helpful": {"n_queries": 1, "mi": None, "mean_length": {}, "adherence": None}}}  # fmt: skip
    assert dump_run_file(Metrics.model_validate(data)) == data


def test_wrong_typed_metrics_field_is_refused_naming_file_and_field(tmp_path):
    run = _run(tmp_path, {"model": "iter-0", "n_queries": "three"})
    path = run / "iter-0" / "eval" / "metrics.json"
    with pytest.raises(SamiInputError, match=r"metrics\.json: n_queries: expected an integer"):
        read_run_file(Metrics, path)
    summary = build_summary(run)  # the report lists it as a problem and goes on
    assert any(p.startswith("iter-0/eval/metrics.json: n_queries:") for p in summary["problems"])
    assert summary["iterations"][0]["missing"] == ["eval/metrics.json"]


def test_older_summary_reads_and_a_wrong_field_is_refused():
    """A summary.json from before `incomplete`, `length_unit` and comparisons."""
    old = {"run": {"name": "r"}, "iterations": [{"iteration": 0, "mi": 0.5, "win_rates": {}}], "config": {},
           "problems": []}  # fmt: skip
    summary = parse_run_file(Summary, old, "report/summary.json")
    assert summary.length_unit == "tokens" and summary.incomplete == {} and summary.iterations[0].comparisons == {}
    with pytest.raises(SamiInputError, match=r"^report/summary\.json: iterations\.0\.mi: expected a number"):
        parse_run_file(Summary, {"iterations": [{"iteration": 0, "mi": "high"}]}, "report/summary.json")
