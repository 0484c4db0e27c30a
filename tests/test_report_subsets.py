"""The report per subset (metrics.json `subsets`) and with a DPO comparison (iter-T/dpo/), from hand-written run
folders that follow notes' CONTRACT.md: summary.json keys, and the values in summary.md, the console and the HTML."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console
from test_report import constitution, make_run, write

from sami.cli import main
from sami.layout import RunLayout
from sami.report import build_summary, summary_table, write_report

SUBSETS = ("harmless", "helpful")
# per iteration and subset: MI, InfoNCE bound, length + in characters, in tokens, win rate vs base, adherence +
SUB = {
    (0, "helpful"): (1.234, 0.111, 401.0, 97.0, None, 0.41),
    (0, "harmless"): (1.876, 0.222, 298.0, 71.0, None, 0.33),
    (1, "helpful"): (1.511, 0.131, 455.0, 104.0, 0.5625, 0.47),
    (1, "harmless"): (2.049, 0.242, 312.0, 76.0, 0.6875, 0.39),
    (2, "helpful"): (1.733, 0.151, 480.0, 111.0, 0.7125, 0.53),
    (2, "harmless"): (2.318, 0.262, 333.0, 80.0, 0.9125, 0.44),
}
# DPO per iteration and subset ("all" = pooled): win rate vs base, adherence +, MI, DPO vs SAMI
DPO = {
    1: {"all": (0.4412, 0.36, 0.951, 0.3133), "helpful": (0.4478, 0.352, 0.903, 0.2641),
        "harmless": (0.4391, 0.371, 1.204, 0.3623)},
    2: {"all": (0.5312, 0.381, 0.958, 0.2822), "helpful": (0.5417, 0.376, 0.912, 0.2314),
        "harmless": (0.5233, 0.389, 1.311, 0.3318)},
}  # fmt: skip


def winrate(rate: float, n: int = 4, subsets: dict | None = None) -> dict:
    """A win-rate summary as `sami.evaluation.winrate.summarize` writes it."""
    out = {"win_rate": rate, "length_balanced_win_rate": rate - 0.01, "length_controlled_win_rate": rate - 0.02,
           "sem": 0.05, "ci95": [rate - 0.1, rate + 0.1], "n": n, "ties": 0, "unparsed": 0, "failed": 0,
           "mean_model_length": 30.0, "mean_baseline_length": 20.0, "n_longer": n, "notes": []}  # fmt: skip
    if subsets:
        out["subsets"] = subsets
    return out


def adherence(positive: float, n: int = 2) -> dict:
    """`sami.evaluation.adherence.adherence`'s shape."""
    rate = {"positive": positive, "positive_ci95": [positive - 0.2, positive + 0.2], "antithesis": 0.5,
            "antithesis_ci95": [0.3, 0.7], "n": n}  # fmt: skip
    return {**rate, "by_principle": {"helpful": dict(rate)}, "by_subset": {}}


def lengths(positive: float, negative: float) -> dict:
    return {"positive": positive, "negative": negative, "by_constitution": {}, "by_principle": {}}


def add_subsets(metrics_path: Path, t: int) -> dict:
    """metrics.json of iteration t with the contract's new keys (mi_kind, mean_length_tokens, subsets)."""
    metrics = json.loads(metrics_path.read_text())
    metrics.update(mi_kind="sign_patterns", n_sign_patterns=4, mi_sampled=False)
    metrics["mean_length_tokens"] = lengths(88.5, 60.5)
    metrics["adherence"] = adherence(0.4, n=4)
    subsets = {}
    for name in SUBSETS:
        mi, bound, chars, tokens, win, adh = SUB[(t, name)]
        subsets[name] = {
            "n_queries": 2, "mi": mi, "mi_sem": 0.07, "mi_bound": bound,
            "mean_length": lengths(chars, chars / 2), "mean_length_tokens": lengths(tokens, tokens / 2),
            "win_rates": {} if win is None else {"base": winrate(win, n=2)}, "adherence": adherence(adh),
        }  # fmt: skip
    metrics["subsets"] = subsets
    write(metrics_path, metrics)
    return metrics


def add_dpo(run: Path, t: int) -> None:
    """iter-t/dpo/: a trained DPO model (TRL logs "loss") and its evaluation, judged vs base and vs SAMI."""
    layout = RunLayout(run)
    write(
        layout.comparison_train(t, "dpo") / "log_history.json", [{"step": 1, "loss": 0.69}, {"step": 2, "loss": 0.5}]
    )
    ev = layout.comparison_eval(t, "dpo")

    def metrics(name: str, n: int) -> dict:
        win, adh, mi, vs = DPO[t][name]
        return {"n_queries": n, "mi": mi, "mi_sem": 0.1, "mi_bound": 0.05, "mean_length": lengths(500.0, 250.0),
                "mean_length_tokens": lengths(120.0, 60.0), "adherence": adherence(adh, n=n),
                "win_rates": {"base": winrate(win, n=n), "sami": winrate(vs, n=n)}}  # fmt: skip

    pooled = metrics("all", 4)
    pooled["win_rates"]["sami"]["subsets"] = {name: winrate(DPO[t][name][3], n=2) for name in SUBSETS}
    pooled.update(model=f"iter-{t}-dpo", model_ref="x", n_constitutions=4, sami_loss=1.3, accuracy=0.5,
                  mi_kind="sign_patterns", n_sign_patterns=4, mi_sampled=False, judge={"kind": "rules"},
                  contrast=None, subsets={name: metrics(name, 2) for name in SUBSETS})  # fmt: skip
    write(ev.metrics, pooled)
    c = constitution(True, True)
    write(
        ev.judgments("sami"),
        [{"id": f"q{i}", "model": f"iter-{t}-dpo", "baseline": "sami", "win": 0, "model_length": 30,
          "baseline_length": 20, "status": "ok", "subset": "helpful", "judge": {"kind": "rules"},
          "constitution": c} for i in range(4)],
    )  # fmt: skip


def subset_run(tmp_path: Path, *, dpo: bool) -> Path:
    run = make_run(tmp_path)
    for t in (0, 1, 2):
        add_subsets(RunLayout(run).eval(t).metrics, t)
        if dpo and t > 0:
            add_dpo(run, t)
    return run


def rows(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_summary_json_subsets(tmp_path):
    run = subset_run(tmp_path, dpo=False)
    summary = write_report(run)
    assert summary == json.loads((run / "report" / "summary.json").read_text())
    for it in summary["iterations"]:
        t = it["iteration"]
        assert "comparisons" not in it  # no iter-T/dpo/: no key
        assert it["mi_kind"] == "sign_patterns" and it["n_sign_patterns"] == 4
        assert it["mean_length_tokens"]["positive"] == 88.5
        assert sorted(it["subsets"]) == list(SUBSETS)
        for name in SUBSETS:
            mi, bound, chars, tokens, win, adh = SUB[(t, name)]
            sub = it["subsets"][name]
            assert set(sub) >= {"n_queries", "mi", "mi_bound", "mean_length", "mean_length_tokens", "win_rates",
                                "adherence"}  # fmt: skip
            assert sub["mi"] == mi and sub["mi_bound"] == bound and sub["n_queries"] == 2
            assert sub["mean_length"]["positive"] == chars and sub["mean_length_tokens"]["positive"] == tokens
            assert sub["win_rates"] == ({} if win is None else {"base": winrate(win, n=2)})
            assert sub["adherence"]["positive"] == adh
            # adherence change from iteration 0 of the same subset
            assert abs(sub["adherence"]["change_positive"] - (adh - SUB[(0, name)][5])) < 1e-9


def test_subsets_in_markdown_html_and_console(tmp_path):
    run = subset_run(tmp_path, dpo=False)
    summary = write_report(run)
    md = (run / "report" / "summary.md").read_text()
    page = (run / "report" / "index.html").read_text()
    console = Console(width=250, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(summary_table(summary))
    text = console.export_text()
    assert "## Per subset" in md and "Per subset" in page and "Per subset" in text
    for (t, name), (mi, bound, chars, tokens, win, adh) in SUB.items():
        # one row per iteration and subset: MI, bound, length in characters with tokens beside, adherence
        row = rows(md, f"| {t} | {name} | 2 | {mi:.3f} | ± 0.070 | {bound:.3f} | {chars:.1f} ({tokens:.1f} tok) |")
        assert len(row) == 1, (t, name, md)
        assert f"{adh:.2f} [{adh - 0.2:.2f}, {adh + 0.2:.2f}]" in row[0]
        cells = f"<td>{mi:.3f}</td><td>± 0.070</td><td>{bound:.3f}</td><td>{chars:.1f} ({tokens:.1f} tok)</td>"
        assert cells in page
        assert re.search(rf"\b{t}\s+{name}\s+2\s+{mi:.3f}\s+{bound:.3f}\s+{chars:.1f} \({tokens:.1f} tok\)", text)
        if win is not None:  # win rates per subset beside the pooled row: raw [CI], length-balanced, -controlled
            lo, hi = 100 * (win - 0.1), 100 * (win + 0.1)
            expected = (f"| {t} | base | {name} | {100 * win:.1f}% [{lo:.1f}, {hi:.1f}] | {100 * (win - 0.01):.1f}% "
                        f"| {100 * (win - 0.02):.1f}% | 2 |")  # fmt: skip
            assert len(rows(md, expected)) == 1, (expected, md)
            assert f"{100 * win:.1f}% [{lo:.1f}, {hi:.1f}]" in page and f"{100 * win:.1f}%" in text
    # the pooled rows stay: iteration 2 vs base over all queries
    assert len(rows(md, "| 2 | base | all | 81.2% [73.0, 89.0] | 71.0% | 74.0% | 8 |")) == 1
    assert "| 2 | all | 4 | 2.412 |" in md  # pooled beside the subsets
    assert "4 sign patterns" in md and "90.8 (88.5 tok)" in md
    # adherence per subset and per principle within a subset
    assert "| 2 | subset helpful, principle helpful | 0.53 [0.33, 0.73] | +0.12 |" in md
    assert "SAMI vs" not in md and "comparison" not in page


def test_dpo_comparison_side_by_side(tmp_path, capsys):
    run = subset_run(tmp_path, dpo=True)
    summary = write_report(run)
    its = {it["iteration"]: it for it in summary["iterations"]}
    assert "comparisons" not in its[0]
    for t, values in DPO.items():
        win, adh, mi, vs = values["all"]
        dpo = its[t]["comparisons"]["dpo"]
        # the same keys as a SAMI iteration entry, plus vs_sami; the head-to-head rate is not a baseline
        assert set(dpo) >= set(its[t]) - {"samples", "comparisons"}
        assert dpo["iteration"] == t and dpo["model"] == f"iter-{t}-dpo" and dpo["mi"] == mi
        assert dpo["win_rates"]["base"]["win_rate"] == win and "sami" not in dpo["win_rates"]
        assert dpo["vs_sami"]["win_rate"] == vs  # from metrics.json, not from judgments-sami.jsonl (all losses)
        assert dpo["vs_sami"]["subsets"]["helpful"]["win_rate"] == values["helpful"][3]
        assert dpo["adherence"]["positive"] == adh and dpo["train"]["final_loss"] == 0.5  # TRL logs "loss"
        assert sorted(dpo["subsets"]) == list(SUBSETS) and "sami" not in dpo["subsets"]["helpful"]["win_rates"]
        assert dpo["missing"] == [] and abs(dpo["adherence"]["change_positive"] - (adh - 0.4)) < 1e-9
    md = (run / "report" / "summary.md").read_text()
    page = (run / "report" / "index.html").read_text()
    assert "## SAMI vs DPO" in md and "SAMI vs DPO" in page
    # SAMI vs base | DPO vs base | SAMI adherence | DPO adherence | SAMI MI | DPO MI | DPO vs SAMI [95% CI]
    assert "| 2 | all | 81.2% | 53.1% | 0.40 | 0.38 | 2.412 | 0.958 | 28.2% [18.2, 38.2] |" in md
    assert "| 1 | helpful | 56.2% | 44.8% | 0.47 | 0.35 | 1.511 | 0.903 | 26.4% [16.4, 36.4] |" in md
    assert "| 2 | harmless | 91.2% | 52.3% | 0.44 | 0.39 | 2.318 | 1.311 | 33.2% [23.2, 43.2] |" in md
    assert "<td>81.2%</td><td>53.1%</td><td>0.40</td><td>0.38</td>" in page
    png = run / "report" / "comparison-dpo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(re.findall(r"<img src='data:image/png;base64,", page)) == 6  # 5 plots with data + the comparison
    assert "alt='comparison-dpo plot'" in page
    assert main(["report", str(run)]) == 0
    assert "SAMI vs DPO" in capsys.readouterr().err

    # the comparison folder goes: so do its key, its table and its plot
    for t in DPO:
        for path in sorted(RunLayout(run).comparison_eval(t, "dpo").root.parent.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        RunLayout(run).comparison_eval(t, "dpo").root.parent.rmdir()
    summary = write_report(run)
    assert all("comparisons" not in it for it in summary["iterations"])
    assert not png.exists() and "SAMI vs DPO" not in (run / "report" / "summary.md").read_text()


def test_comparison_in_progress_is_listed(tmp_path):
    run = make_run(tmp_path)
    (RunLayout(run).comparison_train_partial(1, "dpo")).mkdir(parents=True)  # DPO training started, nothing else
    summary = build_summary(run)
    dpo = summary["iterations"][1]["comparisons"]["dpo"]
    assert dpo["mi"] is None and dpo["vs_sami"] is None and dpo["train"] is None
    assert dpo["missing"] == ["dpo/eval/metrics.json", "dpo/train/log_history.json"]
    assert "comparisons" not in summary["iterations"][2]
    # judged head to head, metrics not written yet: the rate comes from judgments-sami.jsonl, per subset too
    judgments = [{"id": f"q{i}", "win": 1 if i < 3 else 0, "model_length": 30, "baseline_length": 20,
                  "status": "ok", "subset": "helpful" if i % 2 else "harmless"} for i in range(4)]  # fmt: skip
    write(RunLayout(run).comparison_eval(1, "dpo").judgments("sami"), judgments)
    vs = build_summary(run)["iterations"][1]["comparisons"]["dpo"]["vs_sami"]
    assert vs["win_rate"] == 0.75 and vs["n"] == 4
    assert vs["subsets"]["harmless"]["win_rate"] == 1.0 and vs["subsets"]["helpful"]["win_rate"] == 0.5
    write_report(run)
    page = (run / "report" / "index.html").read_text()
    assert "iter-1/dpo/eval/metrics.json: missing" in page
