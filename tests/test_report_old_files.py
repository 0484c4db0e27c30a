"""The report reads the typed run files (`sami.run_files.Summary`): files of older runs (without the later keys)
still render, and a wrong-typed field in a block the report reads is refused in one line naming file and field."""

from __future__ import annotations

import json

import pytest
from test_report import make_run

from sami.cli import main
from sami.errors import SamiInputError
from sami.layout import RunLayout
from sami.model_card import card_text
from sami.report import build_summary, render_html, render_markdown, write_report
from sami.report.cells import DASH
from sami.report.tables import all_tables

# Keys the summary gained after its first version (per iteration entry, and at the top level).
LATER_ENTRY_KEYS = ("mi_kind", "n_sign_patterns", "mi_sampled", "mean_length_tokens", "adherence", "contrast",
                    "benchmarks", "subsets", "comparisons", "missing", "notes", "samples")  # fmt: skip
LATER_TOP_KEYS = ("length_unit", "incomplete", "problems")


def old_summary(tmp_path) -> dict:
    """A summary.json as an early `sami report` wrote it: no later keys, the run block with name and model only."""
    summary = json.loads(json.dumps(build_summary(make_run(tmp_path))))
    for it in summary["iterations"]:
        for key in LATER_ENTRY_KEYS:
            it.pop(key, None)
        for wr in it["win_rates"].values():
            for key in ("length_controlled_win_rate", "unparsed", "failed", "ci95"):
                wr.pop(key, None)
    for key in LATER_TOP_KEYS:
        summary.pop(key, None)
    summary["run"] = {"name": summary["run"]["name"], "model": summary["run"]["model"]}
    return summary


def test_an_older_summary_renders(tmp_path):
    summary = old_summary(tmp_path)
    md = render_markdown(summary)
    rows = {line.split(" | ")[0]: line for line in md.splitlines() if line.startswith("| ")}
    assert "| 2 | 2.412 | 0.377 |" in md  # the metrics row of iteration 2
    win = next(line for line in md.splitlines() if line.startswith("| 2 | base | all |"))
    assert "81.2% |" in win and "[" not in win  # a win rate without its interval: no brackets
    assert win.split(" | ")[5] == DASH  # no length-controlled rate in the old file
    assert rows and "Adherence" not in md and "Per subset" not in md
    html = render_html(summary, {}, {})
    assert "81.2%" in html and "not measured" in html  # the answer's win rate; IFEval absent
    card = card_text(summary, 2, model_name="x")
    assert "win rate vs base (8 queries" in card and "adherence" not in card.split("## Evidence")[0]


def test_older_metrics_json_builds_the_report(tmp_path):
    """metrics.json of the first version (no tokens, MI kind, adherence, subsets) still gives a whole report."""
    run = make_run(tmp_path)
    summary = write_report(run)
    assert summary["problems"] == []
    md = (RunLayout(run).report / "summary.md").read_text()
    assert "| 1 | 1.845 | 0.215 | ± 0.110 | — | 75.0% | 72.0 | 55.5 | 4 | 7 / 3 | 0.690 → 0.610 @2 |" in md


@pytest.mark.parametrize(
    ("field", "value", "line"),
    [
        (("win_rates", "base", "win_rate"), "high",
         'iterations.1.win_rates.base.win_rate: expected a number, got "high"'),
        (("adherence",), {"positive": 0.5, "n": "two"}, 'iterations.1.adherence.n: expected an integer, got "two"'),
        (("contrast",), {"by_principle": {"helpful": {"weak": "maybe"}}},
         'iterations.1.contrast.by_principle.helpful.weak: expected true or false, got "maybe"'),
        (("train",), {"final_loss": [0.5]}, "iterations.1.train.final_loss: expected a number"),
    ],
)  # fmt: skip
def test_a_wrong_field_of_the_summary_is_refused_naming_file_and_field(tmp_path, field, value, line):
    summary = json.loads(json.dumps(build_summary(make_run(tmp_path))))
    block = summary["iterations"][1]
    for key in field[:-1]:
        block = block[key]
    block[field[-1]] = value
    for render in (render_markdown, all_tables):
        with pytest.raises(SamiInputError) as e:
            render(summary)
        assert str(e.value).startswith(f"report/summary.json: {line}")
        assert "\n" not in str(e.value)


def test_a_wrong_block_field_in_metrics_json_is_one_problem_line(tmp_path):
    """A metrics.json whose adherence block holds text for a fraction: the report still builds, and names the file
    and the field; the block is not shown."""
    run = make_run(tmp_path)
    path = RunLayout(run).eval(1).metrics
    metrics = json.loads(path.read_text())
    metrics["adherence"] = {"positive": "most", "n": 4}
    path.write_text(json.dumps(metrics))
    assert main(["report", str(run)]) == 0
    summary = json.loads((RunLayout(run).report / "summary.json").read_text())
    assert summary["problems"] == ['iter-1/eval/metrics.json: adherence.positive: expected a number, got "most"']
    md = (RunLayout(run).report / "summary.md").read_text()
    assert '- iter-1/eval/metrics.json: adherence.positive: expected a number, got "most"' in md


def test_nan_and_missing_numbers_show_a_dash(tmp_path):
    summary = json.loads(json.dumps(build_summary(make_run(tmp_path))))
    summary["iterations"][1]["mi"] = float("nan")
    summary["iterations"][1]["win_rates"]["base"]["ci95"] = [0.5, None]
    md = render_markdown(summary)
    assert "| 1 | — | 0.215 |" in md
    assert next(line for line in md.splitlines() if line.startswith("| 1 | base | all |")).split(" | ")[3] == "62.5%"
