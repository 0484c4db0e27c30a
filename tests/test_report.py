"""The run report: summary.json from the run files, a self-contained index.html that renders in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from sami.cli import main
from sami.errors import SamiInputError
from sami.report import build_summary, render_markdown, write_report

PRINCIPLES = [
    {"name": "helpful", "principle": "Be helpful.", "antithesis": "Be unhelpful."},
    {"name": "harmless", "principle": "Avoid harm.", "antithesis": "Do not avoid harm."},
]
MI = {0: 1.27, 1: 1.845, 2: 2.412}
MI_BOUND = {0: 0.081, 1: 0.215, 2: 0.377}
LENGTHS = {0: (48.5, 61.25), 1: (72.0, 55.5), 2: (90.75, 50.0)}
WIN_BASE = {
    1: {"win_rate": 0.625, "length_balanced_win_rate": 0.58, "length_controlled_win_rate": 0.6,
        "sem": 0.05, "ci95": [0.52, 0.72], "n": 8, "ties": 1, "unparsed": 0, "failed": 0},
    2: {"win_rate": 0.8125, "length_balanced_win_rate": 0.71, "length_controlled_win_rate": 0.74,
        "sem": 0.04, "ci95": [0.73, 0.89], "n": 8, "ties": 0, "unparsed": 1, "failed": 1},
}  # fmt: skip
LOSSES = {1: [0.69, 0.61], 2: [0.7, 0.63, 0.55, 0.48]}


def constitution(helpful: bool, harmless: bool) -> dict:
    signs = {"helpful": helpful, "harmless": harmless}
    return {
        "label": " ".join(f"{'+' if signs[n] else '-'}{n}" for n in sorted(signs)),
        "principles": [{**p, "positive": signs[p["name"]]} for p in PRINCIPLES],
    }


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in obj), encoding="utf-8")
    elif path.suffix == ".yaml":
        path.write_text(yaml.safe_dump(obj), encoding="utf-8")
    else:
        path.write_text(json.dumps(obj), encoding="utf-8")


def make_run(root: Path, iterations: int = 2, *, eval_upto: int | None = None) -> Path:
    """A run folder as the pipeline writes it; iterations above `eval_upto` have no eval/ yet."""
    run = root / "demo-run"
    eval_upto = iterations if eval_upto is None else eval_upto
    write(
        run / "config.yaml",
        {
            "name": "demo-run",
            "model": {"policy": "default", "dtype": "float32"},
            "constitutions": "hh_opus",
            "sampling": {"scheme": "uniform", "n_constitutions": 2},
            "iterations": {"count": iterations, "steps": [2, 4, 6][:iterations]},
            "generation": {"backend": "openai", "api_key_env": "OPENAI_API_KEY", "api_key": "sk-secret-123",
                           "base_url": "http://user:hunter2@127.0.0.1:8080/v1"},
            "evaluation": {"judge": {"backend": "openai", "api_key_env": "JUDGE_KEY"}},
        },
    )  # fmt: skip
    write(
        run / "manifest.json",
        {
            "config_hash": "abc",
            "created_at": "2024-05-01T10:00:00+0000",
            "stages": {"constitutions": {"finished_at": "2024-05-01T10:00:01+0000"}},
        },
    )
    write(run / "constitutions.json", {"task": "dialogue", "writer": "claude-3-opus", "principles": PRINCIPLES})
    queries = [{"id": f"q{i}", "query": f"Human: question <{i}> & more?\n\nAssistant:"} for i in range(4)]
    for t in range(iterations + 1):
        it = run / f"iter-{t}"
        it.mkdir(parents=True)
        if t > 0:
            write(it / "samples.jsonl", [])
            write(it / "samples.stats.json", {"queries": 10, "kept": 6 + t, "dropped": 4 - t,
                                              "drop_reasons": {"refusal": 3 - t, "leftover:[insert": 1}})  # fmt: skip
            history = [{"step": s + 1, "sami/loss": v, "loss": v + 1.0, "sami/accuracy": 0.5 + s / 10}
                       for s, v in enumerate(LOSSES[t])]  # fmt: skip
            history.append({"step": len(LOSSES[t]), "train_loss": 0.6, "train_runtime": 3.0})
            write(it / "train" / "log_history.json", history)
        if t > eval_upto:
            continue
        pos, neg = LENGTHS[t]
        write(
            it / "eval" / "metrics.json",
            {
                "model": "default" if t == 0 else f"iter-{t}",
                "n_queries": len(queries),
                "n_constitutions": 2,
                "mi": MI[t],
                "mi_sem": 0.11,
                "mi_bound": MI_BOUND[t],
                "sami_loss": 0.6,
                "accuracy": 0.75,
                "mean_length": {"positive": pos, "negative": neg,
                                "by_constitution": {"+harmless +helpful": pos, "+harmless -helpful": neg},
                                "by_principle": {"helpful": {"positive": pos, "negative": neg},
                                                 "harmless": {"positive": (pos + neg) / 2, "negative": None}}},
                "win_rates": {} if t == 0 else {"base": WIN_BASE[t]},
            },
        )  # fmt: skip
        c_pos, c_neg = constitution(True, True), constitution(False, True)
        write(
            it / "eval" / "mi_responses.jsonl",
            [{"id": q["id"], "query": q["query"], "constitutions": [c_pos, c_neg],
              "responses": [f"iter{t} kind answer to {q['id']} <b>", f"iter{t} rude answer to {q['id']}"],
              "num_tokens": [int(pos), int(neg)]} for q in queries],
        )  # fmt: skip
        sides = ["model"] if t == 0 else ["model", "base"]
        write(
            it / "eval" / "responses.jsonl",
            [{"id": f"{side}:{q['id']}", "query_id": q["id"], "side": side,
              "model": "default" if side == "base" or t == 0 else f"iter-{t}", "query": q["query"],
              "constitution": c_pos, "response": f"{side} t{t} response to {q['id']} <script>x</script>",
              "num_tokens": 20 + t} for side in sides for q in queries],
        )  # fmt: skip
        if t > 0:
            write(
                it / "eval" / "judgments-base.jsonl",
                [{"id": q["id"], "model": f"iter-{t}", "baseline": "base", "win": 1, "model_length": 30,
                  "baseline_length": 20, "order": "model_first", "status": "ok", "judge_text": "A"} for q in queries],
            )  # fmt: skip
    return run


def test_summary_shape_and_values(tmp_path):
    run = make_run(tmp_path)
    summary = build_summary(run)
    assert set(summary) >= {"iterations", "config", "run", "problems"}
    assert summary["problems"] == []
    its = summary["iterations"]
    assert [it["iteration"] for it in its] == [0, 1, 2]
    for it in its:
        t = it["iteration"]
        assert set(it) >= {"iteration", "mi", "mi_bound", "mean_length", "win_rates"}
        assert it["mi"] == MI[t] and it["mi_bound"] == MI_BOUND[t]
        assert it["mean_length"]["positive"] == LENGTHS[t][0] and it["mean_length"]["negative"] == LENGTHS[t][1]
        assert it["n_constitutions"] == 2 and it["missing"] == []
        assert it["mi_sem"] == 0.11 and it["accuracy"] == 0.75 and it["sami_loss"] == 0.6
        assert it["mean_length"]["by_principle"]["helpful"] == {"positive": LENGTHS[t][0], "negative": LENGTHS[t][1]}
    assert its[0]["win_rates"] == {}
    assert its[1]["win_rates"] == {"base": WIN_BASE[1]} and its[2]["win_rates"] == {"base": WIN_BASE[2]}
    assert its[1]["samples"]["kept"] == 7 and its[1]["samples"]["dropped"] == 3
    assert its[2]["train"]["final_loss"] == LOSSES[2][-1] and its[2]["train"]["steps"] == 4
    assert its[2]["train"]["first_loss"] == LOSSES[2][0]  # "sami/loss" preferred over "loss"
    # the config, without secrets (keys holding api keys are dropped, URL credentials masked)
    config = summary["config"]
    assert config["model"]["policy"] == "default" and config["iterations"]["count"] == 2
    text = json.dumps(config)
    assert "api_key" not in text and "sk-secret-123" not in text and "hunter2" not in text
    assert config["generation"]["base_url"] == "http://***@127.0.0.1:8080/v1"
    assert summary["run"]["model"] == "default" and summary["run"]["name"] == "demo-run"
    assert [p["name"] for p in summary["run"]["constitutions"]["principles"]] == ["helpful", "harmless"]
    assert summary["run"]["started"] == "2024-05-01T10:00:00+0000"


def test_lengths_are_labelled_with_the_unit_the_metrics_carry(tmp_path):
    # metrics.json as the evaluation writes it today: mean_length in tokens, no mean_length_tokens beside it
    summary = build_summary(make_run(tmp_path))
    assert summary["length_unit"] == "tokens"
    md = render_markdown(summary)
    assert "length + tokens" in md and "chars" not in md and "(characters)" not in md
    # with tokens beside, mean_length is in characters and the headings say so
    for it in summary["iterations"]:
        it["mean_length_tokens"] = it["mean_length"]
    summary["length_unit"] = "characters"
    assert "length + chars (tokens)" in render_markdown(summary)


def test_write_report_files_and_self_contained_html(tmp_path):
    run = make_run(tmp_path)
    written = write_report(run)  # returns the summary it wrote; the page is at RunLayout(run).report / "index.html"
    index = run / "report" / "index.html"
    stored = json.loads((run / "report" / "summary.json").read_text())
    assert stored == json.loads(json.dumps(build_summary(run))) == json.loads(json.dumps(written))
    for name in ("mi", "win_rate", "length", "loss"):
        png = run / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = index.read_text()
    # self-contained: no external resources at all
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, re.IGNORECASE)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), refs
    assert "url(" not in page and "@import" not in page
    assert len(re.findall(r"<img src='data:image/png;base64,", page)) == 4
    for t in (0, 1, 2):
        assert f"{MI[t]:.3f}" in page and f"{MI_BOUND[t]:.3f}" in page and f"{LENGTHS[t][0]:.1f}" in page
    assert "± 0.110" in page and "75.0%" in page and "Mean length by principle sign" in page
    assert "62.5%" in page and "81.2%" in page and "[52.0, 72.0]" in page and "71.0%" in page
    # responses are escaped, never markup
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "base t2 response to q0" in page and "model t2 response to q0" in page  # base vs latest
    assert "iter2 kind answer to q0" in page and "iter2 rude answer to q0" in page  # positive vs negative
    assert "-helpful" in page and "sk-secret-123" not in page
    md = (run / "report" / "summary.md").read_text()
    assert "| 2 | 2.412 | 0.377 |" in md and "81.2%" in md


def test_partial_runs_still_build(tmp_path):
    # iteration 2 trained but not evaluated yet; iteration 0 has no win rates
    run = make_run(tmp_path, iterations=2, eval_upto=1)
    (run / "iter-1" / "samples.stats.json").unlink()
    (run / "iter-1" / "eval" / "metrics.json").unlink()  # judgments exist: win rate comes from them
    summary = build_summary(run)
    its = {it["iteration"]: it for it in summary["iterations"]}
    assert its[0]["win_rates"] == {} and its[0]["mi"] == MI[0]
    assert its[1]["mi"] is None and its[1]["missing"] == ["samples.stats.json", "eval/metrics.json"]
    assert its[1]["win_rates"]["base"]["win_rate"] == 1.0 and its[1]["win_rates"]["base"]["n"] == 4
    # from mi_responses.jsonl: characters of the responses, tokens beside (metrics.json's units)
    assert its[1]["mean_length_tokens"]["positive"] == int(LENGTHS[1][0])
    assert its[1]["mean_length"]["positive"] == len("iter1 kind answer to q0 <b>")
    assert its[2]["missing"] == ["eval/metrics.json"] and its[2]["train"]["final_loss"] == LOSSES[2][-1]
    write_report(run)
    page = (run / "report" / "index.html").read_text()
    assert "iter-2/eval/metrics.json: missing" in page and "incomplete" in page

    # a run with only its config and an empty iteration folder
    bare = tmp_path / "bare"
    (bare / "iter-0").mkdir(parents=True)
    write(bare / "config.yaml", {"name": "bare", "iterations": {"count": 2}})
    write_report(bare)
    page = (bare / "report" / "index.html").read_text()
    assert "no evaluation metrics yet" in page and "no training logs yet" in page
    summary = json.loads((bare / "report" / "summary.json").read_text())
    assert summary["iterations"] == [
        {"iteration": 0, "model": None, "n_queries": None, "mi": None, "mi_sem": None, "mi_bound": None,
         "sami_loss": None, "accuracy": None, "n_constitutions": None, "mean_length": {}, "win_rates": {},
         "adherence": None, "contrast": None, "missing": ["eval/metrics.json"], "notes": [],
         # new with the per-subset evaluation (CONTRACT.md)
         "mi_kind": None, "n_sign_patterns": None, "mi_sampled": None, "mean_length_tokens": {}, "subsets": {}}
    ]  # fmt: skip
    assert "iterations not started yet: 1, 2 (of 0..2)" in summary["problems"]

    # a corrupt file is reported, not raised
    (run / "iter-0" / "eval" / "metrics.json").write_text("{not json")
    summary = build_summary(run)
    assert any(p.startswith("iter-0/eval/metrics.json: unreadable") for p in summary["problems"])


def test_not_a_run_folder(tmp_path, capsys):
    with pytest.raises(SamiInputError, match="not a run folder"):
        build_summary(tmp_path)
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere: no such folder" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_prints_index_and_table(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main(["report", str(run)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(run / "report" / "index.html")
    assert "2.412" in err and "81.2%" in err


# ---- rendering in a real browser --------------------------------------------------------------------------------


def browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("no headless browser: install the Debian package `chromium` to run the report rendering test")


def run_browser(exe: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def test_report_renders_in_chromium(tmp_path):
    exe = browser()
    run = make_run(tmp_path)
    write_report(run)
    url = (run / "report" / "index.html").resolve().as_uri()

    # the page's images decode: a load handler marks each <img> with its natural size
    dom = run_browser(exe, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images-rendered="4/4"' in dom.stdout, dom.stdout[:500]
    assert dom.stdout.count('data-rendered="yes"') == 4

    shot = tmp_path / "shot.png"
    res = run_browser(exe, tmp_path, f"--screenshot={shot}", "--window-size=1200,4000", url)
    assert shot.is_file(), res.stderr[-2000:]
    pixels = (imread(shot)[..., :3] * 255).round().astype(np.int16)  # float RGB(A) in [0, 1] -> 0..255
    assert pixels.shape[:2] == (4000, 1200)  # the answer comes first; the plots grid follows the tables
    flat = pixels.reshape(-1, 3)
    packed = (flat[:, 0].astype(np.int32) << 16) | (flat[:, 1].astype(np.int32) << 8) | flat[:, 2]
    assert len(np.unique(packed)) > 200  # not a blank page: many distinct colours
    assert (flat.min(axis=1) < 235).mean() > 0.1
    # the plots are on screen: their line colours (used nowhere else on the page) appear
    for rgb in ((0x3A, 0x6E, 0xA5), (0xE0, 0x7A, 0x1F)):
        assert (np.abs(flat - np.array(rgb)).max(axis=1) < 30).sum() > 200, rgb


def test_report_opens_with_the_answer(tmp_path):
    """Verdict per principle (base -> last, with intervals), the lead plot, win rate and IFEval come before the
    detailed tables."""
    run = make_run(tmp_path)
    forms = {0: (0.1, 0.9), 1: (0.5, 0.95), 2: (0.9, 0.95)}
    for t, (pos, anti) in forms.items():
        path = run / f"iter-{t}" / "eval" / "metrics.json"
        metrics = json.loads(path.read_text())
        rate = {"positive": pos, "positive_ci95": [pos - 0.1, pos + 0.05], "antithesis": anti,
                "antithesis_ci95": [anti - 0.2, anti + 0.05], "n": 20}  # fmt: skip
        metrics["adherence"] = {**rate, "by_principle": {"brief": rate}, "by_subset": {}}
        write(path, metrics)
        ifeval = {"num_prompts": 50, "prompt_level_strict_acc": 0.3 - 0.1 * t, "prompt_level_strict_acc_stderr": 0.05}
        write(run / f"iter-{t}" / "eval" / "ifeval" / "results.json", ifeval)
    write_report(run)
    page = (run / "report" / "index.html").read_text()
    answer, details = page.index("Did it work?"), page.index("Details")
    assert answer < details < page.index("Mean length by principle sign")
    top = page[answer:details]
    assert "0.10 [0.00–0.15] → 0.90 [0.80–0.95]" in top and ">rose<" in top  # under the principle
    assert "0.90 [0.70–0.95] → 0.95 [0.75–1.00]" in top and ">no clear change<" in top  # under the antithesis
    assert "0.300 ± 0.050 → 0.100 ± 0.050" in top  # IFEval, iteration 0 -> 2
    assert "62.5%" in top or "81.2%" in top  # the last win rate vs base
    assert top.count("<img") == 1 and "adherence per principle" in top.lower()
    assert "base t2 response to q0" in top  # the sample pair
    assert len(re.findall(r"<img src='data:image/png;base64,", page)) == 6  # adherence once (top), IFEval plot
