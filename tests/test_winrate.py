"""Win-rate statistics: the paper's worked example, edge cases, the logistic length control, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sami.cli import main
from sami.errors import SamiInputError
from sami.evaluation.winrate import SUMMARY_KEYS, summarize
from sami.io import write_jsonl


def records(wins, model_lengths, baseline_lengths, statuses=None):
    statuses = statuses or ["tie" if w == 0.5 else "ok" for w in wins]
    return [
        {"id": str(i), "win": w, "model_length": m, "baseline_length": b, "status": s}
        for i, (w, m, b, s) in enumerate(zip(wins, model_lengths, baseline_lengths, statuses, strict=True))
    ]


def test_worked_example():
    s = summarize(records([1, 1, 0, 0.5], [10, 20, 5, 8], [5, 30, 5, 8]))
    assert set(SUMMARY_KEYS) <= set(s)
    assert s["win_rate"] == pytest.approx(0.625)
    # longer half = item 0 only (win 1.0); the rest = items 1-3 (1, 0, 0.5 -> 0.5)
    assert s["length_balanced_win_rate"] == pytest.approx(0.75)
    assert s["n"] == 4 and s["ties"] == 1 and s["unparsed"] == 0 and s["failed"] == 0
    assert s["n_longer"] == 1
    assert s["sem"] == pytest.approx(np.std([1, 1, 0, 0.5], ddof=1) / 2)
    low, high = s["ci95"]
    assert 0 <= low <= s["win_rate"] <= high <= 1
    # four items are too few for the length-controlled fit's five folds, and the summary says so
    assert s["length_controlled_win_rate"] is None
    assert s["notes"] == ["length-controlled: needs at least 5 judgments for its 5-fold fit, got 4"]


def test_bootstrap_is_seeded():
    recs = records([1, 0, 1, 0.5, 0, 1, 1], [1] * 7, [2] * 7)
    assert summarize(recs, seed=3)["ci95"] == summarize(recs, seed=3)["ci95"]
    assert summarize(recs, seed=3)["ci95"] != summarize(recs, seed=4, n_bootstrap=50)["ci95"]


def test_all_ties():
    s = summarize(records([0.5] * 5, [3, 9, 4, 4, 1], [4, 4, 4, 4, 4]))
    assert s["win_rate"] == 0.5 and s["length_balanced_win_rate"] == 0.5
    assert s["length_controlled_win_rate"] == pytest.approx(0.5, abs=1e-6)
    assert s["ties"] == 5 and s["sem"] == 0.0 and s["ci95"] == [0.5, 0.5]


def test_one_half_empty_falls_back_and_says_so():
    s = summarize(records([1, 0, 0], [1, 2, 3], [5, 5, 5]))  # the model is never longer
    assert s["length_balanced_win_rate"] == pytest.approx(1 / 3)
    assert any("longer" in note for note in s["notes"])
    s = summarize(records([1, 1, 0], [9, 9, 9], [5, 5, 5]))  # the model is always longer
    assert s["length_balanced_win_rate"] == pytest.approx(2 / 3)
    assert any("not longer" in note for note in s["notes"])


def test_single_item():
    s = summarize(records([1], [3], [2]))
    assert s["n"] == 1 and s["win_rate"] == 1.0 and s["sem"] is None and s["ci95"] == [1.0, 1.0]
    assert s["length_balanced_win_rate"] == 1.0
    assert s["length_controlled_win_rate"] is None  # fewer items than the fit's five folds
    json.dumps(s)


def test_no_items():
    s = summarize([])
    assert s["n"] == 0 and s["win_rate"] is None and s["notes"]


def test_lc_with_no_length_difference_is_the_shrunk_raw_rate():
    # equal lengths: the length feature is 0 and only the model term is fitted
    wins = [1, 1, 0.5, 1, 1, 0, 1, 1, 1, 0]
    s = summarize(records(wins, [7] * 10, [7] * 10))
    assert s["length_controlled_win_rate"] == pytest.approx(alpacaeval_lc(wins, [7] * 10, [7] * 10), abs=1e-6)
    assert 0.5 < s["length_controlled_win_rate"] <= s["win_rate"]  # the L1 penalty shrinks towards 0.5
    s = summarize(records(wins, [9] * 10, [7] * 10))  # the same difference everywhere: sd = 0
    assert any("all length differences are equal" in note for note in s["notes"])


def test_lc_needs_five_items():
    s = summarize(records([1, 0, 1], [1, 2, 3], [3, 2, 1]))
    assert s["length_controlled_win_rate"] is None and any("at least 5" in note for note in s["notes"])


def alpacaeval_lc(wins, model_lengths, baseline_lengths) -> float:
    """The same GLM computed independently: an explicit 5-fold GroupKFold search over LogisticRegressionCV's grid
    of C, each fit a plain L1 `LogisticRegression` on rows duplicated with weights p and 1 − p, then the best C
    refitted on everything and read at zero length difference."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    p = np.asarray(wins, dtype=float)
    delta = np.asarray(baseline_lengths, float) - np.asarray(model_lengths, float)
    sd = delta.std(ddof=1)
    z = np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)
    x = np.column_stack([z, np.ones_like(z)])
    xd, yd, wd = np.vstack([x, x]), np.r_[np.ones(len(p)), np.zeros(len(p))], np.r_[p, 1 - p]
    groups = np.r_[np.arange(len(p)), np.arange(len(p))]

    def fit(c, rows):
        model = LogisticRegression(C=c, l1_ratio=1.0, solver="liblinear", fit_intercept=False, random_state=123)
        return model.fit(xd[rows], yd[rows], sample_weight=wd[rows])

    def loss(model, rows):
        q = np.clip(model.predict_proba(xd[rows])[:, 1], 1e-15, 1 - 1e-15)
        target = np.where(yd[rows] == 1, wd[rows], 1 - wd[rows])
        return -np.mean(target * np.log(q) + (1 - target) * np.log(1 - q))

    grid = np.logspace(-4, 4, 10)
    folds = list(GroupKFold(n_splits=5).split(xd, yd, groups))
    cv_loss = [np.mean([loss(fit(c, train), test) for train, test in folds]) for c in grid]
    best = fit(grid[int(np.argmin(cv_loss))], np.arange(len(yd)))
    return float(best.predict_proba(np.column_stack([np.zeros(len(p)), np.ones(len(p))]))[:, 1].mean())


def test_lc_equals_an_independent_fit_with_ties_and_a_strong_length_effect():
    rng = np.random.default_rng(0)
    n = 120
    model_len = rng.integers(20, 400, n)
    base_len = rng.integers(20, 400, n)
    z = np.tanh((base_len - model_len) / np.std(base_len - model_len, ddof=1))
    wins = (rng.random(n) < 1 / (1 + np.exp(-(0.8 - 3.0 * z)))).astype(float)  # the judge likes long answers
    wins[rng.random(n) < 0.15] = 0.5
    s = summarize(records(wins.tolist(), model_len.tolist(), base_len.tolist()))
    assert s["length_controlled_win_rate"] == pytest.approx(alpacaeval_lc(wins, model_len, base_len), abs=1e-6)
    # with 120 items the cross-validated L1 fit stays close to the unpenalised maximum-likelihood GLM
    from sklearn.linear_model import LogisticRegression

    x = np.column_stack([np.tanh((base_len - model_len) / np.std(base_len - model_len, ddof=1)), np.ones(n)])
    mle = LogisticRegression(C=np.inf, fit_intercept=False).fit(
        np.vstack([x, x]), np.r_[np.ones(n), np.zeros(n)], sample_weight=np.r_[wins, 1 - wins]
    )
    assert s["length_controlled_win_rate"] == pytest.approx(1 / (1 + np.exp(-mle.coef_[0][1])), abs=0.02)


def test_lc_removes_a_pure_length_effect():
    # the model wins exactly when its answer is longer, and it is longer more often than not
    model_len = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]
    base_len = [55] * 12
    wins = [1.0 if m > b else 0.0 for m, b in zip(model_len, base_len, strict=True)]
    s = summarize(records(wins, model_len, base_len))
    assert s["win_rate"] == pytest.approx(7 / 12)
    assert s["length_controlled_win_rate"] < s["win_rate"]
    assert s["length_controlled_win_rate"] == pytest.approx(alpacaeval_lc(wins, model_len, base_len), abs=1e-6)


def test_lc_all_wins_is_degenerate_but_finite_and_noted():
    s = summarize(records([1] * 8, [5, 9, 3, 7, 2, 8, 6, 4], [4] * 8))
    assert 0.99 < s["length_controlled_win_rate"] <= 1.0
    assert any("same outcome" in note for note in s["notes"])


def test_subsets_equal_hand_computations():
    recs = records([1, 0, 1, 0.5, 1, 0], [9, 3, 8, 4, 9, 2], [5, 5, 5, 5, 5, 5])
    for record, subset in zip(recs, ["helpful"] * 3 + ["harmless"] * 3, strict=True):
        record["subset"] = subset
    s = summarize(recs)
    assert s["win_rate"] == pytest.approx(3.5 / 6) and s["n"] == 6
    assert set(s["subsets"]) == {"helpful", "harmless"}
    helpful, harmless = s["subsets"]["helpful"], s["subsets"]["harmless"]
    assert helpful["win_rate"] == pytest.approx(2 / 3) and helpful["n"] == 3
    assert harmless["win_rate"] == pytest.approx(0.5) and harmless["ties"] == 1
    # helpful: longer = items 0, 2 (wins 1, 1), not longer = item 1 (0) -> 0.5
    assert helpful["length_balanced_win_rate"] == pytest.approx(0.5)
    # harmless: longer = item 4 (1), not longer = items 3, 5 (0.5, 0) -> (1 + 0.25) / 2
    assert harmless["length_balanced_win_rate"] == pytest.approx(0.625)
    assert helpful["sem"] == pytest.approx(np.std([1, 0, 1], ddof=1) / math.sqrt(3))
    assert "subsets" not in helpful and set(SUMMARY_KEYS) <= set(helpful)
    assert "subsets" not in summarize(records([1, 0], [1, 2], [2, 1]))


def test_bad_records_are_named():
    with pytest.raises(SamiInputError, match="id=7.*win"):
        summarize([{"id": "7", "win": 0.3, "model_length": 1, "baseline_length": 1}])
    with pytest.raises(SamiInputError, match="model_length"):
        summarize([{"id": "7", "win": 1, "baseline_length": 1}])


def test_cli_json(tmp_path, capsys):
    path = tmp_path / "judgments.jsonl"
    write_jsonl(path, records([1, 1, 0, 0.5], [10, 20, 5, 8], [5, 30, 5, 8]))
    assert main(["winrate", "summarize", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out)  # exactly one JSON object
    assert summary["win_rate"] == 0.625 and summary["length_balanced_win_rate"] == 0.75
    assert set(SUMMARY_KEYS) <= set(summary)
    assert main(["winrate", "summarize", str(path)]) == 0
    assert "75.0%" in capsys.readouterr().out


def test_cli_groups_by_subset(tmp_path, capsys):
    path = tmp_path / "judgments.jsonl"
    recs = records([1, 0, 1, 1], [1, 2, 3, 4], [2, 2, 2, 2])
    for record, subset in zip(recs, ["helpful", "harmless", "helpful", "harmless"], strict=True):
        record["subset"] = subset
    write_jsonl(path, recs)
    assert main(["winrate", "summarize", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["win_rate"] == 0.75 and summary["subsets"]["helpful"]["win_rate"] == 1.0
    assert summary["subsets"]["harmless"]["win_rate"] == 0.5
    assert main(["winrate", "summarize", str(path)]) == 0
    out = capsys.readouterr().out
    assert "helpful" in out and "harmless" in out and "100.0%" in out


def test_cli_malformed_file(tmp_path, capsys):
    path = tmp_path / "judgments.jsonl"
    path.write_text('{"win": 1, "model_length": 1, "baseline_length": 2}\n{"win": 1, "model_length": \n')
    assert main(["winrate", "summarize", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2" in err and len(err.strip().splitlines()) == 1
    path.write_text('{"win": "yes", "model_length": 1, "baseline_length": 2}\n')
    assert main(["winrate", "summarize", str(path)]) == 2
    assert f"{path}:1" in capsys.readouterr().err
