"""Win-rate statistics: the paper's worked example, edge cases, the logistic length control, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sami.cli import main
from sami.errors import SamiInputError
from sami.evaluation.winrate import SUMMARY_KEYS, fit_length_logistic, summarize
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
    assert s["notes"] == []
    # the model's longer response wins: controlling for length lowers the estimate below the raw rate
    assert 0 < s["length_controlled_win_rate"] < s["win_rate"]


def test_bootstrap_is_seeded():
    recs = records([1, 0, 1, 0.5, 0, 1, 1], [1] * 7, [2] * 7)
    assert summarize(recs, seed=3)["ci95"] == summarize(recs, seed=3)["ci95"]
    assert summarize(recs, seed=3)["ci95"] != summarize(recs, seed=4, n_bootstrap=50)["ci95"]


def test_all_ties():
    s = summarize(records([0.5] * 5, [3, 9, 4, 4, 1], [4, 4, 4, 4, 4]))
    assert s["win_rate"] == 0.5 and s["length_balanced_win_rate"] == 0.5
    assert s["length_controlled_win_rate"] == pytest.approx(0.5, abs=1e-9)
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
    assert s["length_controlled_win_rate"] == 1.0  # sd of one difference is 0
    json.dumps(s)


def test_no_items():
    s = summarize([])
    assert s["n"] == 0 and s["win_rate"] is None and s["notes"]


def test_logistic_equals_raw_when_lengths_are_equal():
    wins = [1, 0, 0.5, 1, 1, 0, 1]
    s = summarize(records(wins, [7] * 7, [7] * 7))
    assert s["length_controlled_win_rate"] == s["win_rate"] == pytest.approx(np.mean(wins))
    # the same difference everywhere (sd = 0) also gives the raw rate
    s = summarize(records(wins, [9] * 7, [7] * 7))
    assert s["length_controlled_win_rate"] == s["win_rate"]


def test_logistic_with_no_length_effect_is_close_to_raw():
    # wins balanced within each length difference: the slope is 0 and sigmoid(a) is the raw rate
    wins = [1, 0, 1, 1, 0, 1, 1, 0, 1]
    diffs = [-5, -5, -5, 0, 0, 0, 5, 5, 5]
    s = summarize(records(wins, [10 + d for d in diffs], [10] * 9))
    assert s["length_controlled_win_rate"] == pytest.approx(2 / 3, abs=1e-3)


def test_logistic_recovers_intercept():
    rng = np.random.default_rng(0)
    z = rng.normal(size=20000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-(0.4 + 1.5 * z)))).astype(float)
    a, b = fit_length_logistic(y, z)
    assert a == pytest.approx(0.4, abs=0.05) and b == pytest.approx(1.5, abs=0.07)


def test_logistic_separable_stays_finite():
    a, b = fit_length_logistic(np.array([0.0, 0.0, 1.0, 1.0]), np.array([-1.0, -0.5, 0.5, 1.0]))
    assert math.isfinite(a) and math.isfinite(b) and b > 5


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


def test_cli_malformed_file(tmp_path, capsys):
    path = tmp_path / "judgments.jsonl"
    path.write_text('{"win": 1, "model_length": 1, "baseline_length": 2}\n{"win": 1, "model_length": \n')
    assert main(["winrate", "summarize", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2" in err and len(err.strip().splitlines()) == 1
    path.write_text('{"win": "yes", "model_length": 1, "baseline_length": 2}\n')
    assert main(["winrate", "summarize", str(path)]) == 2
    assert f"{path}:1" in capsys.readouterr().err
