"""Chain-of-thought data generation: templates, marker extraction, filters, records, CLI and a whole run."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT
from test_pipeline import tiny_config, write_config

from sami.constitutions import Constitution, load_constitutions
from sami.data import QuerySource, bundled_queries_path, load_queries
from sami.filters import FilterSettings, reasoning_filters
from sami.generation import Completion
from sami.io import read_jsonl
from sami.layout import dropped_path, stats_path
from sami.prompts import REASONING_MARKERS, get_template, render_prompt
from sami.run_config import SamplingSettings, parse_config
from sami.sampling import generate_samples

CSET = load_constitutions("hh_opus")


# --------------------------------------------------------------------------------------------------------
# Extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "\nThe first principle asks for care.\n\nAssistant: Use a towel.",
            ("The first principle asks for care.", "Use a towel."),
        ),
        (
            "\nI should be kind.\nAssistant: Be kind.\n\nHuman: thanks\n\nAssistant: welcome",
            ("I should be kind.", "Be kind."),
        ),
        ("\nThink.\nAssistant: One.\nAssistant: Two.", ("Think.", "One.")),
        ("\nThink.\nAssistant: Answer here.\n### Conversation\nmore", ("Think.", "Answer here.")),
        ("\nNo marker here, only reasoning that never ends", None),
        ("\nThe Assistant: should not count mid-line", None),
    ],
    ids=["present", "trailing-human-turn", "repeated", "trailing-hashes", "missing", "mid-line"],
)
def test_dialogue_extraction(text, expected):
    assert get_template("dialogue", "base", reasoning=True).extract(text) == expected


def test_summarization_and_chat_extraction():
    summ = get_template("summarization", "base", reasoning=True)
    # no "The post" prefix is added in reasoning mode; a second "Summary:" line is a second answer and is cut
    text = "\nBe brief.\n\nSummary: A cat finds a home.\nSummary: another\n\nPOST: next"
    assert summ.extract(text) == ("Be brief.", "A cat finds a home.")
    chat = get_template("summarization", "chat", reasoning=True)
    assert chat.extract("Reasoning: keep it short.\nSummary: Short.\nUser: more") == ("keep it short.", "Short.")
    # an ordinary template has no marker: the whole completion is the response
    assert get_template("dialogue", "base").extract(" Hi.\n\nHuman: x") == ("", "Hi.")


# --------------------------------------------------------------------------------------------------------
# Templates, filters, config


@pytest.mark.parametrize("task", ["dialogue", "summarization"])
def test_templates_reason_first_and_train_on_ordinary_prompts(task, default_tokenizer):
    constitution = CSET.principles[0].principle
    for style in ("base", "chat"):
        plain, cot = get_template(task, style), get_template(task, style, reasoning=True)
        assert cot.marker == REASONING_MARKERS[task]
        assert cot.training_prompt(constitution, "Q?") == plain.training_prompt(constitution, "Q?")
        gen = render_prompt(cot.generation_prompt(constitution, "Q?"), default_tokenizer)
        assert "Q?" in gen and constitution in gen and "reason" in gen.lower() and cot.marker in gen
        assert gen != render_prompt(plain.generation_prompt(constitution, "Q?"), default_tokenizer)
        if style == "base":
            assert gen.endswith("Reasoning:")
    assert get_template(task, reasoning=True).with_reasoning() == get_template(task, reasoning=True)


def test_reasoning_filters_and_default_budget():
    f = reasoning_filters(FilterSettings(extra_banned=["Constitution", "foo"]), "summarization")
    assert f.extra_banned == ["Constitution", "foo", "principles", "summary"]
    assert "summary" not in reasoning_filters(FilterSettings(), "dialogue").extra_banned
    assert SamplingSettings(reasoning=True).max_new_tokens == 800
    assert SamplingSettings(reasoning=True, max_new_tokens=96).max_new_tokens == 96
    assert SamplingSettings().max_new_tokens == 350
    recipe = yaml.safe_load((ROOT / "configs" / "tldr_llama3_70b_diverse.yaml").read_text())
    config = parse_config(recipe, source="tldr_llama3_70b_diverse.yaml")
    assert config.sampling.reasoning and config.sampling.max_new_tokens == 800
    assert config.prompts.task == "summarization"


# --------------------------------------------------------------------------------------------------------
# Records


class ReasoningScript:
    """Writes reasoning, the marker and an answer; `plan[i]` says how query i's completions go wrong."""

    def __init__(self, plan: dict[int, str] | None = None):
        self.plan, self.calls = plan or {}, []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_p=1.0, stop=None, seed=None):
        self.calls.append({"prompts": prompts, "max_new_tokens": max_new_tokens, "stop": stop})
        out = []
        for i in range(len(prompts)):
            kind = self.plan.get(i // 2, "ok")
            text = {
                "ok": f" Principle one matters here ({i}).\n\nAssistant: A careful answer number {i}.\n\nHuman: x",
                "no_marker": f" I keep reasoning forever ({i})",
                "banned": f" Think ({i}).\nAssistant: As my constitution says, answer {i}.",
            }[kind]
            out.append(Completion(text=text, num_tokens=20, finish_reason="stop"))
        return out


@pytest.fixture(scope="module")
def queries():
    return load_queries(QuerySource(path=str(bundled_queries_path("hh_helpful_train")), limit=3))


def _generate(generator, queries, out, **kwargs):
    budget = {"max_new_tokens": kwargs.pop("max_new_tokens")} if "max_new_tokens" in kwargs else {}
    return generate_samples(
        generator,
        queries,
        CSET,
        out,
        SamplingSettings(reasoning=True, **budget),
        template=get_template("dialogue", "base"),
        filters=kwargs.pop("filters", FilterSettings.for_task("dialogue")),
        progress=False,
        **kwargs,
    )


def test_records_keep_reasoning_in_meta_and_drop_missing_markers(tmp_path, queries):
    gen = ReasoningScript({1: "no_marker", 2: "banned"})
    out = tmp_path / "samples.jsonl"
    stats = _generate(gen, queries, out)
    assert gen.calls[0]["max_new_tokens"] == 800 and "Human:" in gen.calls[0]["stop"]
    assert all(p.endswith("Reasoning:") for p in gen.calls[0]["prompts"])
    (kept,) = read_jsonl(out)
    assert kept["id"] == queries[0].id
    assert kept["responses"] == ["A careful answer number 0.", "A careful answer number 1."]
    assert kept["meta"]["reasoning"] == ["Principle one matters here (0).", "Principle one matters here (1)."]
    plain = get_template("dialogue", "base")
    cs = [Constitution.from_dict(c) for c in kept["constitutions"]]
    assert kept["prompts"] == [plain.training_prompt(c, queries[0].query) for c in cs]
    assert all("Reasoning" not in p and "Principle one matters" not in p for p in kept["prompts"])
    dropped = {r["id"]: r["reason"] for r in read_jsonl(dropped_path(out))}
    assert dropped == {queries[1].id: "no_marker", queries[2].id: "banned:constitution"}
    assert stats["drop_kinds"] == {"no_marker": 1, "banned": 1}
    assert json.loads(stats_path(out).read_text())["kept"] == 1


@pytest.mark.slow
def test_real_model_generates_with_reasoning(tmp_path, queries, default_model, default_tokenizer):
    """The real model writes the reasoning; where it never reaches the marker, a known answer follows it."""
    from sami.generation.base import parse_generation
    from sami.generation.factory import make_generator

    real = make_generator(
        parse_generation(backend="hf", batch_size=4), model=default_model, tokenizer=default_tokenizer
    )
    marker = REASONING_MARKERS["dialogue"]
    cot = get_template("dialogue", "base", reasoning=True)

    class CompleteTheAnswer:
        tokenizer = default_tokenizer
        texts: list[str] = []

        def generate(self, prompts, **kwargs):
            outs = real.generate(prompts, **kwargs)
            self.texts = [o.text for o in outs]
            return [
                o if cot.extract(o.text) else Completion(f"{o.text}\n{marker} Known answer {i}.", o.num_tokens, "stop")
                for i, o in enumerate(outs)
            ]

    gen = CompleteTheAnswer()
    out = tmp_path / "samples.jsonl"
    filters = FilterSettings(leftovers=[], refusal_prefixes=[], drop_identical=False)
    stats = _generate(gen, queries[:2], out, filters=filters, max_new_tokens=32, seed=0)
    assert stats["this_run"]["tokens"] > 0 and any(t.strip() for t in gen.texts)
    kept = read_jsonl(out)
    assert kept and stats["kept"] + stats["dropped"] == 2
    for r in kept:
        assert len(r["meta"]["reasoning"]) == 2 and all(r["meta"]["reasoning"])
        k = [q.id for q in queries].index(r["id"])
        # the kept reasoning is the real model's own text, before the marker
        assert all(x in t for x, t in zip(r["meta"]["reasoning"], gen.texts[2 * k : 2 * k + 2], strict=True))
        for reasoning, prompt, response in zip(r["meta"]["reasoning"], r["prompts"], r["responses"], strict=True):
            assert reasoning not in prompt and "Reasoning:" not in prompt and prompt.endswith("Assistant:")
            assert response and marker not in response


def test_cli_reasoning_flag(tmp_path, monkeypatch):
    import sami.generation.factory
    from sami.cli import main

    script = ReasoningScript()
    monkeypatch.setattr(sami.generation.factory, "make_generator", lambda settings, **kw: script)
    out = tmp_path / "samples.jsonl"
    args = ["generate", "--queries", str(bundled_queries_path("hh_helpful_train")), "--limit", "1"]
    args += ["--constitutions", "hh_opus", "--out", str(out), "--no-progress", "--reasoning"]
    assert main(args) == 0
    assert script.calls[0]["max_new_tokens"] == 800
    (record,) = read_jsonl(out)
    assert record["meta"]["reasoning"] and record["responses"][0] == "A careful answer number 0."


# --------------------------------------------------------------------------------------------------------
# A whole run


def test_sami_run_with_reasoning_completes(tmp_path, tiny_model_dir, monkeypatch):
    """A random tiny model never writes the marker: reasoning-mode generation calls get one appended."""
    import sami.generation.factory
    from sami.cli import main

    make = sami.generation.factory.make_generator
    seen = []

    class AppendMarker:
        def __init__(self, inner):
            self.inner, self.tokenizer = inner, getattr(inner, "tokenizer", None)

        def generate(self, prompts, **kwargs):
            outs = self.inner.generate(prompts, **kwargs)
            if not all(isinstance(p, str) and p.endswith("Reasoning:") for p in prompts):
                return outs  # evaluation: ordinary prompts, untouched
            seen.append(kwargs["max_new_tokens"])
            texts = [f"{o.text}\nAssistant: reply {i}." for i, o in enumerate(outs)]
            return [Completion(t, o.num_tokens, o.finish_reason) for t, o in zip(texts, outs, strict=True)]

    monkeypatch.setattr(sami.generation.factory, "make_generator", lambda *a, **kw: AppendMarker(make(*a, **kw)))
    config = tiny_config(tiny_model_dir, iterations={"count": 1, "steps": [1]})
    config["sampling"]["reasoning"] = True
    cfg = write_config(tmp_path / "cfg.yaml", config)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--output-dir", str(out)]) == 0
    assert seen and set(seen) == {6}
    samples = read_jsonl(out / "iter-1" / "samples.jsonl")
    assert samples
    for r in samples:
        assert len(r["meta"]["reasoning"]) == 2
        assert all(resp.startswith("reply") for resp in r["responses"])
        assert all("Reasoning:" not in p for p in r["prompts"])
    assert (out / "iter-1" / "eval" / "metrics.json").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["sampling"]["reasoning"] is True
