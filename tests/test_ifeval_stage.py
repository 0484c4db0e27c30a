"""`evaluation.benchmarks: [ifeval]` in a run: a stage per iteration, in summary.json, the console and the report."""

from __future__ import annotations

import json

import yaml
from test_pipeline import tiny_config, write_config

from sami.cli import main
from sami.run_config import parse_config
from sami.stage_parts import config_hash
from sami.stages import stage_keys, stage_table


def bench_config(model_dir, **evaluation):
    config = tiny_config(model_dir, iterations={"count": 1, "steps": [1]})
    config["evaluation"] |= {"benchmarks": ["ifeval"], "ifeval_limit": 3, "ifeval_max_new_tokens": 4, **evaluation}
    return config


def test_runs_without_benchmarks_keep_their_stages_and_hash(tiny_model_dir):
    plain = tiny_config(tiny_model_dir)
    with_field = tiny_config(tiny_model_dir)
    with_field["evaluation"] |= {"benchmarks": [], "ifeval_limit": 7}  # no benchmark: the limit changes nothing
    a, b = parse_config(plain, source="a"), parse_config(with_field, source="b")
    assert config_hash(a) == config_hash(b) and stage_keys(a) == stage_keys(b)
    assert not [k for k in stage_keys(a) if k.endswith("/benchmarks")]
    c = parse_config(bench_config(tiny_model_dir), source="c")
    assert [k for k in stage_keys(c) if k.endswith("/benchmarks")] == ["iter-0/benchmarks", "iter-1/benchmarks"]
    table = stage_table(c)  # IFEval reads π_t alone: evaluating another principle pool does not rerun it
    assert table["iter-0/benchmarks"].upstream == () and table["iter-1/benchmarks"].upstream == ("iter-1/train",)
    heldout = parse_config(bench_config(tiny_model_dir, mode="eval"), source="e")
    assert stage_keys(heldout)["iter-1/benchmarks"] == stage_keys(c)["iter-1/benchmarks"]
    assert stage_keys(c)["iter-1/responses"] == stage_keys(parse_config(tiny_config(tiny_model_dir, iterations={
        "count": 1, "steps": [1]}), source="d"))["iter-1/responses"]  # fmt: skip


def test_ifeval_stage_per_iteration_in_summary_console_and_report(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", bench_config(tiny_model_dir))
    assert main(["run", str(cfg), "--output-dir", str(out)]) == 0
    for t in (0, 1):
        folder = out / f"iter-{t}" / "eval" / "ifeval"
        results = json.loads((folder / "results.json").read_text())
        assert results["num_prompts"] == 3 and 0 <= results["prompt_level_strict_acc"] <= 1
        assert len((folder / "eval_results_loose.jsonl").read_text().splitlines()) == 3
        assert all(json.loads(line)["num_tokens"] <= 4 for line in (folder / "responses.jsonl").open())
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert [it["benchmarks"]["ifeval"]["num_prompts"] for it in summary["iterations"]] == [3, 3]
    assert "IFEval iter-1 (3 prompts): prompt-level strict" in capsys.readouterr().err
    page = (out / "report" / "index.html").read_text()
    assert "IFEval accuracy per iteration" in page and "3 IFEval prompts" in page
    # a rerun redoes nothing; a changed IFEval limit reruns only the benchmark stages and the report
    changed = write_config(tmp_path / "cfg2.yaml", bench_config(tiny_model_dir, ifeval_limit=2))
    assert main(["run", str(changed), "--output-dir", str(out), "--dry-run"]) == 0
    to_run = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("run ")]
    assert to_run == ["iter-0/benchmarks", "iter-1/benchmarks", "report"]
    assert yaml.safe_load((out / "config.yaml").read_text())["evaluation"]["ifeval_limit"] == 3
