"""Every judgment names its judge; a judgments file of another judge is never mixed with new verdicts."""

from __future__ import annotations

import hashlib
import json

import pytest

from sami.data import load_queries
from sami.errors import SamiInputError
from sami.evaluation.context import EvaluationInputs
from sami.evaluation.evaluate import run_evaluation
from sami.evaluation.judge_prompts import LOCAL_JUDGE_PROMPT
from sami.evaluation.judge_settings import JudgeSettings, parse_judge
from sami.evaluation.judgments import judge_hash
from sami.evaluation.settings import EvaluationSettings
from sami.io import read_jsonl
from sami.layout import EvalLayout


def test_identity_names_what_decides_verdicts():
    local = parse_judge(kind="local", model="m", dtype="bfloat16", seed=3)
    ident = local.identity()
    assert ident == {
        "kind": "local", "preset": None, "model": "m", "dtype": "bfloat16",
        "prompt_sha256": hashlib.sha256(LOCAL_JUDGE_PROMPT.encode()).hexdigest(),
        "both_orders": False, "seed": 3, "tie_band": 1e-3,
    }  # fmt: skip
    assert parse_judge(kind="local", model="m", dtype="bfloat16", seed=3, batch_size=64).identity() == ident
    assert parse_judge(kind="local", model="m", dtype="bfloat16", seed=3, prompt="{query}").identity() != ident
    api = parse_judge(kind="api", model_name="gpt-4-0613", base_url="http://x/v1", api_key_env="MY_KEY").identity()
    assert api["model"] == "gpt-4-0613" and api["base_url"] == "http://x/v1" and api["temperature"] == 0.0
    assert api["max_tokens"] == 256 and "MY_KEY" not in json.dumps(api) and "api_key_env" not in api


def _evaluate(out, tiny_model, tokenizer, judge: JudgeSettings, **kwargs):
    queries = load_queries("hh_harmless_test")[:3]
    settings = EvaluationSettings(constitutions="hh_opus", max_new_tokens=3, intrinsic=False, judge=judge)
    given = {q.id: f"Baseline answer {i}." for i, q in enumerate(queries)}
    return run_evaluation(
        settings, "m", out, EvaluationInputs(queries=queries, model=tiny_model, tokenizer=tokenizer,
        baselines={"base": "unused"}, baseline_responses={"base": given}, judge_model=tiny_model,
        judge_tokenizer=tokenizer), **kwargs,
    )  # fmt: skip


def test_another_judge_is_refused_or_rejudges_keeping_the_old_verdicts(tmp_path, tiny_model, default_tokenizer):
    first, second = parse_judge(kind="local", seed=0), parse_judge(kind="local", seed=1)
    metrics = _evaluate(tmp_path, tiny_model, default_tokenizer, first)
    path = EvalLayout(tmp_path).judgments("base")
    old = path.read_bytes()
    assert {json.dumps(r["judge"], sort_keys=True) for r in read_jsonl(path)} == {
        json.dumps(first.identity(), sort_keys=True)
    }
    assert metrics["judge"] == first.identity()

    # The same judge again: nothing to judge, nothing rewritten.
    _evaluate(tmp_path, tiny_model, default_tokenizer, first)
    assert path.read_bytes() == old

    aside = tmp_path / f"judgments-base.{judge_hash(first.identity())}.jsonl"
    with pytest.raises(SamiInputError) as err:
        _evaluate(tmp_path, tiny_model, default_tokenizer, second)
    assert str(err.value) == (
        f"{path}: judged by another judge (local/default); pass --rejudge to judge again (the old verdicts are kept "
        f"as {aside.name})"
    )
    assert path.read_bytes() == old and not aside.exists()

    metrics = _evaluate(tmp_path, tiny_model, default_tokenizer, second, rejudge=True)
    assert aside.read_bytes() == old  # kept, never deleted
    judged = read_jsonl(path)
    assert len(judged) == 3 and all(r["judge"] == second.identity() for r in judged)
    assert metrics["judge"] == second.identity() and metrics["win_rates"]["base"]["n"] == 3
    assert EvalLayout(tmp_path).judgment_files() == [path]  # the kept file is no baseline of its own


def test_rejudge_is_a_setting_too(tmp_path, tiny_model, default_tokenizer):
    _evaluate(tmp_path, tiny_model, default_tokenizer, parse_judge(kind="local", seed=0))
    assert EvaluationSettings(rejudge=True).rejudge and not EvaluationSettings().rejudge
    queries = load_queries("hh_harmless_test")[:3]
    settings = EvaluationSettings(
        constitutions="hh_opus", intrinsic=False, judge=parse_judge(kind="local", seed=5), rejudge=True
    )
    metrics = run_evaluation(
        settings, "m", tmp_path, EvaluationInputs(queries=queries, model=tiny_model, tokenizer=default_tokenizer,
        baselines={"base": "unused"}, judge_model=tiny_model, judge_tokenizer=default_tokenizer),
    )  # fmt: skip
    assert metrics["judge"]["seed"] == 5
