"""Per-subset metrics: metrics.json's `subsets` equal hand computations on small files with two subsets."""

from __future__ import annotations

import json

import pytest

from sami.constitutions import load_constitutions
from sami.data import Query
from sami.evaluation.context import EvaluationInputs, query_constitutions
from sami.evaluation.evaluate import run_evaluation
from sami.evaluation.metrics_step import SUBSET_KEYS
from sami.evaluation.settings import EvaluationSettings
from sami.io import atomic_write_json
from sami.layout import EvalLayout

WINS = {"h0": 1, "h1": 0, "h2": 1, "x0": 0.5, "x1": 0}  # h*: helpful, x*: harmless
MI = {"h0": 2.0, "h1": 4.0, "h2": 0.0, "x0": 1.0, "x1": 3.0}
RESPONSES = {"h0": ("aa", "b"), "h1": ("aaaa", "bb"), "h2": ("a", "bbbbbb"), "x0": ("aaa", "b"), "x1": ("a", "bbb")}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def folder(tmp_path):
    queries = [Query(qid, f"query {qid}?", {"subset": "helpful" if qid[0] == "h" else "harmless"}) for qid in WINS]
    cset = load_constitutions("hh_opus")
    settings = EvaluationSettings(n_constitutions=2, scheme="opposite")
    cs = query_constitutions(cset, queries, settings)
    files = EvalLayout(tmp_path)
    _write(files.mi_responses, [
        {"id": q.id, "query": q.query, "constitutions": [c.to_dict() for c in cs[q.id]], "responses": RESPONSES[q.id]}
        for q in queries
    ])  # fmt: skip
    atomic_write_json(files.scores, {"eos": "generated", "contrast": {}, "intrinsic": {
        qid: {"mi": MI[qid], "mi_bound": MI[qid] / 10, "sami_loss": 0.5, "accuracy": 1.0,
              "lengths": [len(RESPONSES[qid][0]) + 1, len(RESPONSES[qid][1]) + 1]}
        for qid in WINS
    }})  # fmt: skip
    _write(files.judgments("base"), [
        {"id": qid, "model": "m", "baseline": "base", "win": win, "model_length": 10 + i, "baseline_length": 12,
         "status": "tie" if win == 0.5 else "ok", "subset": "helpful" if qid[0] == "h" else "harmless", "judge": {}}
        for i, (qid, win) in enumerate(WINS.items())
    ])  # fmt: skip
    return tmp_path, queries, cset, settings


def test_subsets_and_pooled_equal_hand_computations(folder):
    out, queries, cset, settings = folder
    metrics = run_evaluation(
        settings,
        str(out / "no-model"),
        out,
        EvaluationInputs(queries=queries, cset=cset, baselines={"base": "x"}),
        steps=("metrics",),
    )
    assert sorted(metrics["subsets"]) == ["harmless", "helpful"]
    helpful, harmless = metrics["subsets"]["helpful"], metrics["subsets"]["harmless"]
    assert set(helpful) == set(SUBSET_KEYS)
    assert helpful["n_queries"] == 3 and harmless["n_queries"] == 2
    # MI: the mean over the subset's queries, its sem the sample std / sqrt(n)
    assert helpful["mi"] == pytest.approx(2.0) and harmless["mi"] == pytest.approx(2.0)
    assert helpful["mi_sem"] == pytest.approx((((0 + 4 + 4) / 2) ** 0.5) / 3**0.5)
    assert harmless["mi_sem"] == pytest.approx((((1 + 1) / 1) ** 0.5) / 2**0.5)
    assert metrics["mi"] == pytest.approx(10 / 5) and metrics["mi_bound"] == pytest.approx(0.2)
    assert helpful["mi_bound"] == pytest.approx(0.2)
    # win rates: ties count 0.5
    assert helpful["win_rates"]["base"]["win_rate"] == pytest.approx(2 / 3)
    assert harmless["win_rates"]["base"]["win_rate"] == pytest.approx(0.25)
    assert harmless["win_rates"]["base"]["ties"] == 1
    assert metrics["win_rates"]["base"]["win_rate"] == pytest.approx(2.5 / 5)
    # lengths: characters, tokens beside (here chars + 1)
    assert helpful["mean_length"]["positive"] == pytest.approx((2 + 4 + 1) / 3)
    assert helpful["mean_length"]["negative"] == pytest.approx((1 + 2 + 6) / 3)
    assert harmless["mean_length_tokens"]["positive"] == pytest.approx((4 + 2) / 2)
    assert metrics["mean_length"]["positive"] == pytest.approx((2 + 4 + 1 + 3 + 1) / 5)
    assert helpful["adherence"] is None  # hh_opus carries no checks


def test_one_subset_writes_no_subsets(folder):
    out, queries, cset, settings = folder
    metrics = run_evaluation(
        settings, "x", out, EvaluationInputs(queries=queries[:3], cset=cset, baselines={}), steps=("metrics",)
    )
    assert metrics["subsets"] == {} and metrics["n_queries"] == 3 and metrics["mi"] == pytest.approx(2.0)
