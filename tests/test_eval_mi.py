"""The paper's MI: every sign pattern of the positive constitution's principles, response tokens only."""

from __future__ import annotations

import json

import pytest
import torch

from sami.constitutions import Constitution, Principle, load_constitutions
from sami.data import load_queries
from sami.evaluation.context import EvaluationInputs, sign_patterns
from sami.evaluation.evaluate import run_evaluation
from sami.evaluation.settings import EvaluationSettings
from sami.io import read_jsonl
from sami.layout import EvalLayout
from sami.logprobs import tokenize_prompts, tokenize_responses
from sami.prompts import get_template, render_prompt


def _constitution(k: int, prefix: str = "p") -> Constitution:
    return Constitution(tuple((Principle(f"{prefix}{i}", f"Be {i}.", f"Be not {i}."), True) for i in range(k)))


def test_sign_patterns_all_then_a_seeded_sample():
    patterns, sampled = sign_patterns(_constitution(2))
    assert not sampled and [c.label() for c in patterns] == ["+p0 +p1", "+p0 -p1", "-p0 +p1", "-p0 -p1"]
    many, sampled = sign_patterns(_constitution(5), cap=16, seed=0)
    assert sampled and len(many) == 16 and many[0].is_positive()
    assert len({c.label() for c in many}) == 16
    other, _ = sign_patterns(_constitution(5, prefix="q"), cap=16, seed=0)  # the same patterns for every query
    assert [list(c.signs().values()) for c in other] == [list(c.signs().values()) for c in many]
    assert [c.label() for c in sign_patterns(_constitution(5), cap=16, seed=1)[0]] != [c.label() for c in many]


def _naive_logprob(model, tokenizer, prompt: str, response: str) -> float:
    """log π(response | prompt), response tokens only, from one plain forward pass."""
    prompt_ids = tokenize_prompts(tokenizer, [prompt])[0]
    response_ids = tokenize_responses(tokenizer, [response], prompts=[prompt], eos="never")[0]
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    n = len(prompt_ids)
    return float(sum(logp[n - 1 + t, tok] for t, tok in enumerate(response_ids)))


def test_mi_over_sign_patterns_equals_a_naive_computation(tmp_path, tiny_model, default_tokenizer):
    queries = load_queries("hh_helpful_test")[:2]
    settings = EvaluationSettings(constitutions="hh_opus", max_new_tokens=4, device="cpu")
    metrics = run_evaluation(
        settings,
        "m",
        tmp_path,
        EvaluationInputs(queries=queries, model=tiny_model, tokenizer=default_tokenizer, baselines={}),
    )
    assert metrics["mi_kind"] == "sign_patterns" and metrics["n_sign_patterns"] == 4 and not metrics["mi_sampled"]
    assert metrics["n_constitutions"] == 4 and metrics["mi_eos"] == "never"
    template = get_template("dialogue", "base")
    per_query = []
    for record in read_jsonl(EvalLayout(tmp_path).mi_responses):
        cs = [Constitution.from_dict(c) for c in record["constitutions"]]
        assert [c.label() for c in cs] == [c.label() for c in sign_patterns(cs[0])[0]]
        prompts = [render_prompt(template.training_prompt(c, record["query"]), default_tokenizer) for c in cs]
        n = len(cs)
        L = [[_naive_logprob(tiny_model, default_tokenizer, prompts[i], record["responses"][j]) for j in range(n)]
             for i in range(n)]  # fmt: skip
        per_query.append(sum(L[j][j] - sum(L[i][j] for i in range(n)) / n for j in range(n)) / n)
    assert metrics["mi"] == pytest.approx(sum(per_query) / len(per_query), rel=1e-4, abs=1e-4)


class _Counting:
    """A generator wrapper counting the prompts it was asked to complete."""

    prompts = 0

    def __init__(self, inner):
        self.inner = inner

    def generate(self, prompts, **kwargs):
        _Counting.prompts += len(prompts)
        return self.inner.generate(prompts, **kwargs)


def test_two_principles_at_iteration_0_generate_nothing_extra(tmp_path, tiny_model, default_tokenizer, monkeypatch):
    """positive, antithesis and the two one-flipped responses of the contrast check are the 4 sign patterns."""
    import sami.generation.factory

    original = sami.generation.factory.make_generator
    monkeypatch.setattr(sami.generation.factory, "make_generator", lambda *a, **k: _Counting(original(*a, **k)))
    queries = load_queries("hh_helpful_test")[:2]
    cset = load_constitutions("demo_checks")
    settings = EvaluationSettings(max_new_tokens=3, device="cpu", scheme="opposite")
    run_evaluation(
        settings, "m", tmp_path, EvaluationInputs(queries=queries, cset=cset, model=tiny_model,
        tokenizer=default_tokenizer, baselines={}, contrast=True),
    )  # fmt: skip
    assert _Counting.prompts == 2 * 4  # the 4 sign patterns; the antithesis and contrast responses reuse them
    files = EvalLayout(tmp_path)
    mi = {r["id"]: r for r in read_jsonl(files.mi_responses)}
    assert all(len(r["responses"]) == 4 for r in mi.values())
    positive = {r["query_id"]: r["response"] for r in read_jsonl(files.responses)}
    anti = {r["query_id"]: r["response"] for r in read_jsonl(files.antithesis_responses)}
    for q in queries:
        assert mi[q.id]["responses"][0] == positive[q.id] and mi[q.id]["responses"][3] == anti[q.id]
    scores = json.loads(files.scores.read_text())
    assert set(scores["contrast"]) == {"brief", "no_commas"} and len(scores["intrinsic"]) == 2


def test_training_pairs_kind_and_changed_kind_refused(tmp_path, tiny_model, default_tokenizer):
    from sami.errors import SamiInputError

    queries = load_queries("hh_helpful_test")[:2]
    common = EvaluationInputs(queries=queries, model=tiny_model, tokenizer=default_tokenizer, baselines={})
    pairs = EvaluationSettings(constitutions="hh_opus", max_new_tokens=3, device="cpu", mi="training_pairs")
    metrics = run_evaluation(pairs, "m", tmp_path, common)
    assert metrics["mi_kind"] == "training_pairs" and metrics["n_constitutions"] == 2
    assert metrics["n_sign_patterns"] is None and metrics["mi_eos"] == "generated"
    with pytest.raises(SamiInputError, match="mi_responses.jsonl: query .* other constitutions"):
        run_evaluation(pairs.model_copy(update={"mi": "sign_patterns"}), "m", tmp_path, common)
