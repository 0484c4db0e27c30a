"""The checkable default run end to end at toy size: adherence, the rules judge, the contrast check, `sami check`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from sami.cli import main
from sami.io import read_jsonl
from sami.run_config import load_config


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_model_dir) -> Path:
    """The bundled default config (`sami run` with no config) with tiny overrides: a random model, 3 queries."""
    config = load_config().model_dump(mode="json")
    assert config["constitutions"] == "demo_checks" and config["evaluation"]["judge"]["kind"] == "rules"
    config["model"]["policy"] = str(tiny_model_dir)
    config["sampling"].update(max_new_tokens=5, chunk_size=2)
    config["prompts"]["style"] = "base"  # a random model under the chat template writes only EOS
    config["filters"] = {"leftovers": [], "refusal_prefixes": [], "drop_identical": False}
    config["data"].update(train_per_iteration=2, eval_limit=2)
    config["training"].update(report_to=[], per_device_train_batch_size=2)
    config["iterations"].update(count=2, steps=[1, 1])
    config["evaluation"].update(max_new_tokens=5)
    out = tmp_path_factory.mktemp("demo") / "run"
    path = out.parent / "cfg.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    return out


def test_default_run_reports_adherence(demo_run):
    summary = json.loads((demo_run / "report" / "summary.json").read_text())
    its = summary["iterations"]
    assert [it["iteration"] for it in its] == [0, 1, 2]
    for it in its:
        a = it["adherence"]
        assert a["n"] == 4  # 2 helpful + 2 harmless eval queries
        assert set(a["by_principle"]) == {"brief", "no_commas"}
        assert set(a["by_subset"]) == {"helpful", "harmless"}
        for key in ("positive", "antithesis"):
            assert 0.0 <= a[key] <= 1.0
            lo, hi = a[f"{key}_ci95"]
            assert lo <= a[key] <= hi
        assert a["change_positive"] == pytest.approx(a["positive"] - its[0]["adherence"]["positive"])
    assert its[0]["adherence"]["change_positive"] == 0
    assert set(its[0]["contrast"]["by_principle"]) == {"brief", "no_commas"}  # iteration 0 only
    assert its[1]["contrast"] is None
    for t in (1, 2):
        assert its[t]["win_rates"]["base"]["n"] == 4
        judgments = read_jsonl(demo_run / f"iter-{t}" / "eval" / "judgments-base.jsonl")
        assert {j["judge"]["kind"] for j in judgments} == {"rules"}
    # the opposite scheme's MI responses already hold the antithesis: nothing generated twice
    anti = read_jsonl(demo_run / "iter-1" / "eval" / "antithesis_responses.jsonl")
    assert len(anti) == 4 and all(r["reused"] for r in anti)
    metrics = json.loads((demo_run / "iter-1" / "eval" / "metrics.json").read_text())
    assert metrics["adherence"]["n"] == 4
    md = (demo_run / "report" / "summary.md").read_text()
    assert "Adherence" in md and "principle brief" in md and "Contrast check" in md
    html = (demo_run / "report" / "index.html").read_text()
    assert "Adherence to checkable principles" in html and "adherence plot" in html
    assert (demo_run / "report" / "adherence.png").is_file()


def test_sami_check_scores_evaluation_files(demo_run, capsys, tmp_path):
    responses = demo_run / "iter-1" / "eval" / "responses.jsonl"
    assert main(["check", "demo_checks", str(responses), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["groups"]) == {"model", "base"}
    assert result["groups"]["model"]["n"] == 4
    summary = json.loads((demo_run / "report" / "summary.json").read_text())
    assert result["groups"]["model"]["adherence"] == pytest.approx(summary["iterations"][1]["adherence"]["positive"])
    mi = demo_run / "iter-1" / "eval" / "mi_responses.jsonl"
    assert main(["check", "demo_checks", str(mi), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert set(groups) == {"+brief +no_commas", "-brief -no_commas"}  # the demo's MI: the training pair
    assert groups["-brief -no_commas"]["adherence"] == pytest.approx(
        summary["iterations"][1]["adherence"]["antithesis"]
    )
    plain = tmp_path / "plain.jsonl"
    plain.write_text('{"id": "a", "response": "Want more?"}\n{"id": "b", "response": "No. Never."}\n')
    assert main(["check", "demo_checks", str(plain)]) == 0
    assert "0.50" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "response": "x"}\n{"id": "b", "text": "y"}\n')
    assert main(["check", "demo_checks", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err and "response" in err


def test_contrast_check_flags_a_pair_that_changes_nothing(tiny_model_dir, tmp_path):
    """A principle whose antithesis reads the same to the model: MI and adherence change within noise -> weak."""
    from sami.constitutions import ConstitutionSet
    from sami.principle_writer import contrast_check

    cset = ConstitutionSet.from_dict(
        {
            "task": "dialogue",
            "principles": [
                {"name": "polite", "principle": "Be polite.", "antithesis": "Be polite!",
                 "check": {"id": "keywords:existence", "kwargs": {"keywords": ["zebra-unicorn"]}}},
            ],
        }
    )  # fmt: skip
    result = contrast_check(cset, n_queries=3, model=str(tiny_model_dir), max_new_tokens=4, style="base")
    entry = result["by_principle"]["polite"]
    assert entry["n"] == 3 and entry["weak"] and entry["adherence_positive"] == 0
    assert any("adherence 0" in r for r in entry["reasons"])
    assert result["warnings"] and "'polite'" in result["warnings"][0]


class _Store:
    def __init__(self, records):
        self.records = records


@pytest.mark.parametrize(
    "mi, mi_sem, kept_brief, weak",
    [
        (0.1, 0.2, 2, True),  # MI within noise of 0
        (1.0, 0.1, 2, False),  # MI clear; adherence 0.5 vs 0.5 is only a note
        (1.0, 0.1, 0, True),  # never brief even when asked: nothing to amplify
    ],
)
def test_contrast_metrics_rules(mi, mi_sem, kept_brief, weak):
    from sami.constitutions import Constitution, load_constitutions
    from sami.data import Query
    from sami.evaluation.contrast import contrast_metrics

    cset = load_constitutions("demo_checks")
    pos = Constitution(tuple((p, True) for p in cset.principles))
    queries = [Query(f"q{i}", "Hi?", {}) for i in range(4)]
    answers = ["Short."] * kept_brief + ["Long. And more."] * (4 - kept_brief)
    model = _Store([{"id": f"model:q{i}", "response": a} for i, a in enumerate(answers)])
    flipped = _Store([{"id": f"brief:q{i}", "response": a} for i, a in enumerate(answers)])
    result = contrast_metrics(
        queries, {q.id: pos for q in queries}, model, flipped, ["brief"], mi_fn=lambda r: {"mi": mi, "mi_sem": mi_sem}
    )
    entry = result["by_principle"]["brief"]
    assert entry["weak"] is weak and bool(result["warnings"]) is weak
    assert entry["adherence_change"] == 0 and entry["notes"]


def test_principles_write_reports_weak_pairs(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`sami principles write` runs the contrast check on what it wrote (the writer itself is stubbed here: the
    bundled model writing principles is tested in test_writer.py)."""
    import sami.principle_writer
    from sami.constitutions import ConstitutionSet

    written = ConstitutionSet.from_dict(
        {
            "task": "dialogue",
            "principles": [{"name": "polite", "principle": "Be polite.", "antithesis": "Be polite!"}],
        }
    )
    monkeypatch.setattr(sami.principle_writer, "write_constitutions_from_settings", lambda *a, **k: written)
    monkeypatch.setattr(sami.principle_writer, "contrast_check", _tiny_contrast(sami.principle_writer.contrast_check))
    out = tmp_path / "p.yaml"
    argv = ["principles", "write", "--task", "chat", "--principle", "polite", "--out", str(out)]
    assert main([*argv, "--contrast-model", str(tiny_model_dir), "--contrast-n", "2"]) == 0
    err = capsys.readouterr().err
    assert "weak pairs: polite" in err and "'polite'" in err
    assert out.is_file()


def _tiny_contrast(original):
    def run(cset, **kwargs):
        return original(cset, **{**kwargs, "max_new_tokens": 4, "style": "base"})

    return run
