"""Intrinsic metrics: the paper's MI, the InfoNCE bound and response lengths."""

from __future__ import annotations

import math
import random

import pytest
import torch
from conftest import make_tiny_model

from sami.constitutions import Constitution, Principle, load_constitutions, sample_constitutions
from sami.errors import SamiInputError
from sami.evaluation.metrics import intrinsic_metrics, length_stats
from sami.logprobs import logprob_matrix
from sami.loss import paper_mutual_information, sami_loss
from sami.prompts import get_template, render_prompt

QUERIES = ["How do I boil an egg?", "What is the capital of France?", "Tell me a joke about cats."]


@pytest.fixture(scope="module")
def cset():
    return load_constitutions("hh_opus")


def greedy(model, tokenizer, prompt: str, max_new_tokens: int = 6) -> str:
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(
            **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(out[0, ids.input_ids.shape[1] :], skip_special_tokens=True)


def mi_records(model, tokenizer, cset, n_constitutions: int = 4) -> list[dict]:
    """Greedy responses of `model` under every constitution of each query (as the evaluate stage writes them)."""
    template = get_template("dialogue", "base")
    records = []
    for i, query in enumerate(QUERIES):
        constitutions = sample_constitutions(cset, "uniform", n_constitutions, random.Random(i))
        responses = [
            template.postprocess(greedy(model, tokenizer, template.generation_prompt(c, query))) for c in constitutions
        ]
        dicts = [c.to_dict() for c in constitutions]
        records.append({"id": f"q{i}", "query": query, "constitutions": dicts, "responses": responses})
    return records


def test_mi_is_zero_when_the_model_cannot_see_the_constitution(default_tokenizer, cset):
    # A llama with no transformer layers predicts each token from the previous token only, so neither its greedy
    # responses nor their log-probs can depend on the constitution (every prompt ends with "Assistant:").
    blind = make_tiny_model(len(default_tokenizer), num_hidden_layers=0)
    records = mi_records(blind, default_tokenizer, cset)
    for r in records:
        assert len(set(r["responses"])) == 1 and r["responses"][0].strip()
    result = intrinsic_metrics(blind, default_tokenizer, records, template=get_template("dialogue", "base"))
    assert result["n_queries"] == 3 and result["n_constitutions"] == 4 and result["n_skipped"] == 0
    assert result["mi"] == pytest.approx(0.0, abs=1e-5)


def test_mi_is_positive_when_the_model_sees_the_constitution(default_tokenizer, cset):
    # The same measurement with a random model that attends to its prompt (weights large enough for its greedy
    # responses to change with the constitution): each greedy response is likeliest under its own constitution.
    sharp = make_tiny_model(len(default_tokenizer), initializer_range=0.2)
    records = mi_records(sharp, default_tokenizer, cset)
    assert any(len(set(r["responses"])) > 1 for r in records)
    result = intrinsic_metrics(sharp, default_tokenizer, records, template=get_template("dialogue", "base"))
    assert result["mi"] > 0.01


def test_matches_the_loss_module(default_tokenizer, tiny_model, cset):
    template = get_template("dialogue", "base")
    constitutions = sample_constitutions(cset, "uniform", 3, random.Random(0))
    responses = ["Boil it for seven minutes.", "No.", "Eggs are for the weak, figure it out yourself."]
    record = {"id": "x", "query": QUERIES[0], "constitutions": constitutions, "responses": responses}
    result = intrinsic_metrics(tiny_model, default_tokenizer, [record, {**record, "id": "y"}], template=template)
    prompts = [render_prompt(template.training_prompt(c, QUERIES[0]), default_tokenizer) for c in constitutions]
    with torch.no_grad():
        summed = logprob_matrix(tiny_model, default_tokenizer, prompts, responses, normalize="sum")
        mean = logprob_matrix(tiny_model, default_tokenizer, prompts, responses, normalize="mean")
    assert result["mi"] == pytest.approx(float(paper_mutual_information(summed)), abs=1e-4)
    assert result["mi_bound"] == pytest.approx(math.log(3) - float(sami_loss(mean).loss), abs=1e-4)
    assert result["mi_sem"] == pytest.approx(0.0, abs=1e-5)  # the same query twice


@pytest.mark.slow
def test_real_model_mi_is_positive_when_responses_echo_their_constitution(default_model, default_tokenizer, cset):
    # Each response repeats its own constitution; the real model copies from its prompt, so every response is
    # likelier under its own constitution: the paper's MI is clearly positive and the InfoNCE bound too.
    records = []
    for i, query in enumerate(QUERIES[:2]):
        constitutions = sample_constitutions(cset, "uniform", 2, random.Random(i))
        responses = [f"I follow these principles: {c.render()}" for c in constitutions]
        records.append({"id": str(i), "query": query, "constitutions": constitutions, "responses": responses})
    result = intrinsic_metrics(default_model, default_tokenizer, records, template=get_template("dialogue", "base"))
    assert result["mi"] > 1.0
    assert 0 < result["mi_bound"] <= math.log(2)
    assert result["accuracy"] == 1.0


def test_lengths_by_sign_label_and_principle():
    a, b = Principle("a", "be A", "be not A"), Principle("b", "be B", "be not B")
    pos = Constitution(((a, True), (b, True)))
    neg_a = Constitution(((b, True), (a, False)))
    neg_both = Constitution(((a, False), (b, False)))
    stats = length_stats([[pos, neg_a], [pos, neg_both]], [[10, 4], [20, 2]])
    assert stats["positive"] == 15 and stats["negative"] == 3
    assert stats["by_constitution"] == {"+a +b": 15, "-a +b": 4, "-a -b": 2}
    assert stats["by_principle"]["a"] == {"positive": 15, "negative": 3}
    assert stats["by_principle"]["b"] == {"positive": pytest.approx(34 / 3), "negative": 2}


def test_empty_responses_are_skipped_and_bad_records_named(default_tokenizer, tiny_model, cset):
    constitutions = sample_constitutions(cset, "uniform", 2, random.Random(0))
    good = {"id": "g", "query": "hi", "constitutions": constitutions, "responses": ["Hello!", "Go away."]}
    empty = {"id": "e", "query": "hi", "constitutions": constitutions, "responses": ["", "Go away."]}
    result = intrinsic_metrics(tiny_model, default_tokenizer, [good, empty], template=get_template("dialogue", "base"))
    assert result["n_queries"] == 2 and result["n_skipped"] == 1
    assert result["mean_length_tokens"]["positive"] == pytest.approx(
        len(default_tokenizer("Hello!", add_special_tokens=False).input_ids) / 2
    )
    assert result["mean_length"]["positive"] == len("Hello!") / 2  # characters
    with pytest.raises(SamiInputError, match="query bad"):
        intrinsic_metrics(
            tiny_model, default_tokenizer, [{**good, "id": "bad", "responses": ["x"]}], template=get_template()
        )
