"""Baselines: their own MI and lengths (hf baselines), and their prompt style (chat in the user turn)."""

from __future__ import annotations

import json

import pytest

from sami.constitutions import load_constitutions
from sami.data import load_queries
from sami.evaluation.context import EvaluationInputs
from sami.evaluation.evaluate import run_evaluation
from sami.evaluation.settings import BaselineSettings, EvaluationSettings
from sami.evaluation.templates import user_turn_template
from sami.generation import parse_generation
from sami.io import read_jsonl
from sami.layout import EvalLayout
from sami.prompts import render_prompt


def _run(out, tiny_model, tokenizer, baselines, **settings):
    queries = load_queries("hh_helpful_test")[:2]
    s = EvaluationSettings(constitutions="hh_opus", max_new_tokens=3, device="cpu", **settings)
    return run_evaluation(
        s, "m", out, EvaluationInputs(queries=queries, model=tiny_model, tokenizer=tokenizer, baselines=baselines),
        steps=("responses", "metrics"),
    )  # fmt: skip


def test_hf_baseline_gets_mi_and_lengths(tmp_path, tiny_model, default_tokenizer, tiny_model_dir, monkeypatch):
    metrics = _run(
        tmp_path, tiny_model, default_tokenizer, {"other": BaselineSettings(model=str(tiny_model_dir), style="base")}
    )
    entry = metrics["baselines"]["other"]
    assert isinstance(entry["mi"], float) and set(entry) == {"mi", "mi_sem", "mean_length", "mean_length_tokens"}
    files = EvalLayout(tmp_path)
    records = read_jsonl(files.baseline_mi_responses("other"))
    assert len(records) == 2 and all(len(r["responses"]) == 4 for r in records)
    chars = [len(r["responses"][0]) for r in records]
    assert entry["mean_length"]["positive"] == pytest.approx(sum(chars) / 2)
    scores = json.loads(files.scores.read_text())
    assert entry["mi"] == pytest.approx(sum(v["mi"] for v in scores["baselines"]["other"].values()) / 2)
    # the baseline's positive response is its response in responses.jsonl (generated once)
    side = {r["query_id"]: r["response"] for r in read_jsonl(files.responses) if r["side"] == "other"}
    assert all(r["responses"][0] == side[r["id"]] for r in records)

    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.suffix == ".jsonl" or p.name == "scores.json"}

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("sami.models.load_model", no_loading)
    again = _run(
        tmp_path, tiny_model, default_tokenizer, {"other": BaselineSettings(model=str(tiny_model_dir), style="base")}
    )
    assert again["baselines"] == metrics["baselines"]
    assert before == {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in before}


def test_baseline_intrinsic_off_and_api_baselines_skipped(tmp_path, tiny_model, default_tokenizer, tiny_model_dir):
    off = _run(
        tmp_path / "off", tiny_model, default_tokenizer, {"other": str(tiny_model_dir)}, baseline_intrinsic=False
    )
    assert off["baselines"] == {} and not EvalLayout(tmp_path / "off").baseline_mi_responses("other").exists()
    api = BaselineSettings(model="x", generation=parse_generation(backend="openai", model_name="x"))
    queries = load_queries("hh_helpful_test")[:2]
    settings = EvaluationSettings(constitutions="hh_opus", max_new_tokens=3, device="cpu", intrinsic=False)
    metrics = run_evaluation(
        settings, "m", tmp_path / "api",
        EvaluationInputs(queries=queries, model=tiny_model, tokenizer=default_tokenizer, baselines={"api": api},
                         baseline_responses={"api": {q.id: "Hi." for q in queries}}),
        steps=("responses", "metrics"),
    )  # fmt: skip
    assert metrics["baselines"] == {}


def test_bare_instruct_baseline_is_prompted_in_the_user_turn(default_tokenizer):
    """A baseline given as a bare id whose tokenizer has a chat template: instruction, constitution and query in
    the user turn (as the authors prompted mistral-7b-instruct v0.1)."""
    from sami.evaluation.baselines import baseline_template
    from sami.evaluation.context import prepare

    cset = load_constitutions("hh_opus")
    query = load_queries("hh_helpful_test")[0]
    inputs = EvaluationInputs(queries=[query], cset=cset, baselines={"instruct": "some/instruct"})
    ev = prepare(EvaluationSettings(), "m", "/tmp/unused-eval", inputs)
    constitution = ev.positive[query.id]
    template = baseline_template(ev, ev.baselines["instruct"], default_tokenizer)
    assert template == user_turn_template("dialogue")
    text = render_prompt(template.generation_prompt(constitution, query.query), default_tokenizer)
    user = (
        "Reply to the user. The reply must follow every principle of this constitution:\n"
        f"{constitution.render()}\n\n{query.query.strip()}"
    )
    expected = default_tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
    )
    assert text == expected
    assert f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n" in text
    # without a chat template, or with an explicit base style, the evaluation's base prompts
    assert baseline_template(ev, ev.baselines["instruct"], None).style == "base"
    assert baseline_template(ev, BaselineSettings(model="x", style="base"), default_tokenizer) is ev.template
