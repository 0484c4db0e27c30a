"""The evaluation stage and `sami evaluate`: files, resume after an interruption, precomputed baselines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import ROOT, make_tiny_model

import sami.models
from sami.cli import main
from sami.data import load_queries
from sami.evaluation.context import EvaluationInputs
from sami.evaluation.evaluate import run_evaluation
from sami.evaluation.judge_settings import parse_judge
from sami.evaluation.judges import LocalJudge
from sami.evaluation.settings import EvaluationSettings
from sami.evaluation.winrate import SUMMARY_KEYS, check_record
from sami.io import read_jsonl


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, default_tokenizer) -> Path:
    """A second tiny random model (the baseline, and a cheap local judge)."""
    path = tmp_path_factory.mktemp("tiny-other")
    make_tiny_model(len(default_tokenizer), seed=1).save_pretrained(path)
    default_tokenizer.save_pretrained(path)
    return path


def argv(model: Path, other: Path, out: Path, *extra: str) -> list[str]:
    return [
        "evaluate", "--model", str(model), "--baseline", f"base={other}", "--queries", "hh_helpful_test",
        "--constitutions", "hh_opus", "--out", str(out), "--limit", "5", "--max-new-tokens", "4",
        "--chunk-size", "2", "--judge", "local", "--judge-model", str(other), "--device", "cpu", *extra,
    ]  # fmt: skip


def ids_of(path: Path) -> list[str]:
    return [str(r["id"]) for r in read_jsonl(path)]


def test_interrupted_evaluate_resumes_and_judges_each_id_once(tmp_path, tiny_model_dir, other_model_dir, monkeypatch):
    out = tmp_path / "eval"
    prompts_seen: list[int] = []
    original = LocalJudge.compare

    def interrupt_on_second_chunk(self, prompts):
        prompts_seen.append(len(prompts))
        if len(prompts_seen) == 2:
            raise KeyboardInterrupt
        return original(self, prompts)

    monkeypatch.setattr(LocalJudge, "compare", interrupt_on_second_chunk)
    assert main(argv(tiny_model_dir, other_model_dir, out)) == 130
    assert len(ids_of(out / "judgments-base.jsonl")) == 2  # the first chunk was written before the interruption
    assert not (out / "metrics.json").exists()
    first_responses = read_jsonl(out / "responses.jsonl")

    def counting(self, prompts):
        prompts_seen.append(len(prompts))
        return original(self, prompts)

    prompts_seen.clear()
    monkeypatch.setattr(LocalJudge, "compare", counting)
    assert main(argv(tiny_model_dir, other_model_dir, out)) == 0
    assert sum(prompts_seen) == 3  # only the 3 queries not judged before
    judged = read_jsonl(out / "judgments-base.jsonl")
    queries = [q.id for q in load_queries("hh_helpful_test")[:5]]
    assert sorted(r["id"] for r in judged) == sorted(queries)  # each id exactly once
    for r in judged:
        check_record(r, r["id"])
        assert r["model"] == str(tiny_model_dir) and r["baseline"] == "base"
    responses = read_jsonl(out / "responses.jsonl")
    assert Counter(r["side"] for r in responses) == {"model": 5, "base": 5}
    assert len({r["id"] for r in responses}) == 10
    assert responses[: len(first_responses)] == first_responses  # nothing regenerated
    assert sorted(ids_of(out / "mi_responses.jsonl")) == sorted(queries)
    metrics = json.loads((out / "metrics.json").read_text())
    # the paper's MI by default: the 4 sign patterns of hh_opus's 2 principles
    assert metrics["n_queries"] == 5 and metrics["n_constitutions"] == 4 and metrics["mi_kind"] == "sign_patterns"
    assert set(SUMMARY_KEYS) <= set(metrics["win_rates"]["base"]) and metrics["win_rates"]["base"]["n"] == 5
    assert isinstance(metrics["mi"], float) and isinstance(metrics["mi_bound"], float)
    assert set(metrics["mean_length"]) >= {"positive", "negative", "by_constitution"}
    # A third run has nothing left to do and changes no record.
    prompts_seen.clear()
    assert main(argv(tiny_model_dir, other_model_dir, out)) == 0
    assert prompts_seen == [] and read_jsonl(out / "judgments-base.jsonl") == judged


def test_no_judge_gives_intrinsic_metrics_only(tmp_path, tiny_model_dir, other_model_dir):
    out = tmp_path / "eval"
    (tmp_path / "pairs.yaml").write_text("mi: training_pairs\n")  # C constitutions drawn as for training
    extra = ("--no-judge", "--n-constitutions", "3", "--config", str(tmp_path / "pairs.yaml"))
    assert main(argv(tiny_model_dir, other_model_dir, out, *extra)) == 0
    assert not list(out.glob("judgments-*.jsonl"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["win_rates"] == {} and metrics["n_constitutions"] == 3
    records = read_jsonl(out / "mi_responses.jsonl")
    assert len(records) == 5 and all(len(r["responses"]) == len(r["constitutions"]) == 3 for r in records)
    assert all(r["constitutions"][0]["label"] == "+harmless +helpful" for r in records)  # the positive one first
    responses = {r["query_id"]: r for r in read_jsonl(out / "responses.jsonl")}
    assert {r["side"] for r in responses.values()} == {"model"}
    # the positive response is shared with mi_responses (same prompt, greedy)
    assert all(r["responses"][0] == responses[r["id"]]["response"] for r in records)


def test_precomputed_baseline_responses_are_used(tmp_path, tiny_model, default_tokenizer):
    queries = load_queries("hh_harmless_test")[:3]
    given = {q.id: f"Baseline answer {i}." for i, q in enumerate(queries)}
    settings = EvaluationSettings(
        constitutions="hh_opus", judge=parse_judge(kind="local"), max_new_tokens=3, intrinsic=False
    )
    metrics = run_evaluation(
        settings,
        "iter-1-checkpoint",
        tmp_path,
        EvaluationInputs(
            queries=queries,
            model=tiny_model,
            tokenizer=default_tokenizer,
            model_label="iter-1",
            baselines={"base": str(tmp_path / "never-loaded")},
            baseline_responses={"base": given},
            judge_model=tiny_model,
            judge_tokenizer=default_tokenizer,
        ),
    )
    base = [r for r in read_jsonl(tmp_path / "responses.jsonl") if r["side"] == "base"]
    assert {r["query_id"]: r["response"] for r in base} == given
    judged = read_jsonl(tmp_path / "judgments-base.jsonl")
    assert [r["id"] for r in judged] == [q.id for q in queries]
    lengths = [len(default_tokenizer(given[q.id], add_special_tokens=False).input_ids) for q in queries]
    assert [r["baseline_length_tokens"] for r in judged] == lengths  # policy-tokenizer tokens
    assert [r["baseline_length"] for r in judged] == [len(given[q.id]) for q in queries]  # characters
    assert all(r["subset"] == "harmless" for r in judged)
    assert metrics["win_rates"]["base"]["n"] == 3 and metrics["mi"] is None


def test_run_evaluation_settings_reuse_iteration_0_base_responses_and_mi(tmp_path, tiny_model_dir, other_model_dir):
    """The pipeline's way: `evaluation_settings` + `evaluation_baselines`, iteration 0's base responses as
    `baseline_responses`
    and its folder as `baseline_evals`, so the base model is neither generated again nor loaded for its MI."""
    from unittest import mock

    from sami.constitutions import load_constitutions
    from sami.evaluation.baselines import load_side_responses
    from sami.run_config import parse_config
    from sami.stage_settings import evaluation_baselines, evaluation_settings

    config = parse_config(
        {
            "model": {"policy": str(tiny_model_dir)},
            "data": {"train": [{"bundled": "hh_helpful_train"}], "eval": [{"bundled": "hh_helpful_test"}]},
            "sampling": {"scheme": "paper-dialogue"},
            "evaluation": {"max_new_tokens": 3, "mi_max_patterns": 2, "judge": {"model": str(other_model_dir)}},
        }
    )
    queries, cset = load_queries("hh_helpful_test")[:3], load_constitutions("hh_opus")
    settings, template = evaluation_settings(config), config.prompts.build()
    common = {"queries": queries, "cset": cset, "template": template}
    it0, it1 = tmp_path / "iter-0" / "eval", tmp_path / "iter-1" / "eval"
    baselines0 = evaluation_baselines(config, against_base=False)
    m0 = run_evaluation(
        settings, str(tiny_model_dir), it0,
        EvaluationInputs(model_label="iter-0", baselines=baselines0, judge=bool(baselines0), **common),
    )  # fmt: skip
    assert m0["win_rates"] == {} and not list(it0.glob("judgments-*"))
    loads = []
    real_load = sami.models.load_model

    def load_model(ref, *args, **kwargs):
        loads.append(str(ref))
        return real_load(ref, *args, **kwargs)

    with mock.patch("sami.models.load_model", load_model):
        m1 = run_evaluation(
            settings, str(other_model_dir), it1,
            EvaluationInputs(model_label="iter-1", baselines=evaluation_baselines(config, against_base=True),
                             baseline_responses={"base": load_side_responses(it0 / "responses.jsonl")},
                             baseline_evals={"base": it0}, **common),
        )  # fmt: skip
    assert m1["model"] == "iter-1" and m1["win_rates"]["base"]["n"] == 3
    assert str(tiny_model_dir) not in loads  # the base model: responses and MI from iteration 0
    base_then = {r["query_id"]: r["response"] for r in read_jsonl(it0 / "responses.jsonl")}
    base_now = {r["query_id"]: r["response"] for r in read_jsonl(it1 / "responses.jsonl") if r["side"] == "base"}
    assert base_now == base_then
    assert m1["baselines"]["base"]["mi"] == pytest.approx(m0["mi"])
    assert m1["baselines"]["base"]["mean_length"] == m0["mean_length"]


def test_bad_input_is_one_line(tmp_path, tiny_model_dir, other_model_dir, capsys):
    out = tmp_path / "eval"
    assert main(argv(tiny_model_dir, other_model_dir, out, "--baseline", "model=x")) == 2
    assert "bad name 'model'" in capsys.readouterr().err
    assert main(argv(tiny_model_dir, other_model_dir, out, "--n-constitutions", "1")) == 2
    assert "n_constitutions" in capsys.readouterr().err


@pytest.mark.slow
def test_killed_evaluate_resumes_with_api_judge(tmp_path, tiny_model_dir, other_model_dir, llama_server):
    """SIGKILL `sami evaluate` once some judgments are on disk; a rerun judges only the rest, each id once."""
    out = tmp_path / "eval"
    principles = [{"name": "helpful", "principle": "Be helpful.", "antithesis": "Be unhelpful."}]
    (tmp_path / "short.json").write_text(json.dumps({"task": "dialogue", "writer": "test", "principles": principles}))
    (tmp_path / "eval.yaml").write_text("judge:\n  max_tokens: 8\n  max_concurrency: 1\n")
    cmd = [sys.executable, "-m", "sami.cli", *argv(tiny_model_dir, other_model_dir, out, "--chunk-size", "1")]
    cmd += ["--limit", "3"]
    cmd[cmd.index("hh_opus")] = str(tmp_path / "short.json")
    cmd[cmd.index("local")] = "api"
    at = cmd.index("--judge-model")
    del cmd[at : at + 2]  # an api judge names its model with --judge-model-name (a local judge's field is refused)
    cmd += ["--judge-base-url", llama_server, "--judge-model-name", "smollm2", "--no-intrinsic"]
    cmd += ["--config", str(tmp_path / "eval.yaml")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    judgments = out / "judgments-base.jsonl"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if judgments.exists() and ids_of(judgments):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_with = len(ids_of(judgments))
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert 1 <= killed_with < 3
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = ids_of(judgments)
    assert len(ids) == len(set(ids)) == 3
    assert all(r["status"] in ("ok", "unparsed") for r in read_jsonl(judgments))
