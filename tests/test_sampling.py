"""The self-generation stage: record format, filters and drop reasons, interruption and resume."""

from __future__ import annotations

import json
import zlib

import pytest

from sami.constitutions import Constitution, load_constitutions
from sami.data import QuerySource, bundled_queries_path, load_queries
from sami.errors import SamiInputError
from sami.filters import FilterSettings
from sami.generation import Completion
from sami.io import read_jsonl
from sami.layout import dropped_path, stats_path
from sami.prompts import get_template
from sami.sampling import SamplingSettings, generate_samples


class ScriptedGenerator:
    """Answers each generation prompt from its query; `plan` maps a query text to how its responses fail."""

    def __init__(self, plan: dict[str, str]):
        self.plan = plan
        self.calls = 0
        self.prompts_seen: list[str] = []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_p=1.0, stop=None, seed=None):
        self.calls += 1
        out = []
        for p in prompts:
            self.prompts_seen.append(p)
            query = p.rsplit("Human: ", 1)[1].rsplit("\n\nAssistant:", 1)[0]
            # a checksum of the constitution makes each response differ by constitution
            tag = zlib.crc32(p.rsplit("Constitution:\n", 1)[1].split("\n\nHuman:", 1)[0].encode())
            kind = self.plan.get(query, "ok")
            text = {
                "ok": f" A careful answer ({tag}).\n\nHuman: next turn",
                "refusal": " I'm sorry, I can't help with that.",
                "leftover": f" [insert answer] ({tag})",
                "identical": " The same words for every constitution.",
                "empty": "   \nHuman: nothing said",
            }[kind]
            out.append(Completion(text=text, num_tokens=len(text.split()), finish_reason="stop"))
        return out


class InterruptAfter:
    """Wraps a generator and raises KeyboardInterrupt on call number `k`, like Ctrl-C mid-run."""

    def __init__(self, inner, k: int):
        self.inner, self.k, self.calls = inner, k, 0

    def generate(self, prompts, **kwargs):
        self.calls += 1
        if self.calls == self.k:
            raise KeyboardInterrupt
        return self.inner.generate(prompts, **kwargs)


@pytest.fixture(scope="module")
def queries():
    return load_queries(QuerySource(path=str(bundled_queries_path("hh_helpful_train")), limit=12))


@pytest.fixture(scope="module")
def plan(queries) -> dict[str, str]:
    kinds = {1: "refusal", 4: "leftover", 5: "identical", 8: "refusal", 10: "empty"}
    return {q.query: kinds[i] for i, q in enumerate(queries) if i in kinds}


def _run(generator, queries, out, **kwargs):
    sampling = SamplingSettings(
        scheme=kwargs.pop("scheme", "uniform"),
        n_constitutions=kwargs.pop("n_constitutions", 2),
        max_new_tokens=16,
        chunk_size=kwargs.pop("chunk_size", 2),
        **{k: kwargs.pop(k) for k in list(kwargs) if k in SamplingSettings.model_fields},
    )
    return generate_samples(
        generator,
        queries,
        load_constitutions("hh_opus"),
        out,
        sampling,
        template=get_template("dialogue", "base"),
        filters=FilterSettings.for_task("dialogue"),
        progress=kwargs.pop("progress", False),
        **kwargs,
    )


def test_records_filters_and_drop_reasons(tmp_path, queries, plan):
    out = tmp_path / "samples.jsonl"
    gen = ScriptedGenerator(plan)
    stats = _run(gen, queries, out, n_constitutions=3, chunk_size=5)
    assert gen.calls == 3  # 12 queries in chunks of 5: all C prompts of a chunk in one call
    kept, dropped = read_jsonl(out), read_jsonl(dropped_path(out))
    assert len(kept) == 7 and len(dropped) == 5
    assert {r["id"] for r in kept} | {r["id"] for r in dropped} == {q.id for q in queries}
    assert stats["drop_reasons"] == {"refusal:I'm sorry": 2, "leftover:[insert": 1, "identical": 1, "empty": 1}
    assert stats["kept"] == 7 and stats["dropped"] == 5 and stats["queries"] == 12
    assert json.loads(stats_path(out).read_text())["drop_reasons"] == stats["drop_reasons"]

    by_id = {q.id: q for q in queries}
    for r in kept:
        assert set(r) == {"id", "query", "constitutions", "prompts", "responses", "meta"}
        assert r["query"] == by_id[r["id"]].query
        assert len(r["constitutions"]) == len(r["prompts"]) == len(r["responses"]) == 3
        cs = [Constitution.from_dict(c) for c in r["constitutions"]]
        assert cs[0].is_positive() and not any(c.is_positive() for c in cs[1:])
        assert len({c.label() for c in cs}) == 3
        for c, prompt, response in zip(cs, r["prompts"], r["responses"], strict=True):
            # the training prompt (no format example) under constitution j, ending in the response slot
            assert prompt.endswith(f"Human: {r['query']}\n\nAssistant:") and "Format example" not in prompt
            assert c.render() in prompt
            assert response.startswith("A careful answer") and "Human:" not in response  # post-processed
        assert r["meta"]["labels"] == [c.label() for c in cs] and len(r["meta"]["num_tokens"]) == 3
    # the generator saw generation prompts (with the format example), not training prompts
    assert all("Format example" in p for p in gen.prompts_seen)


def test_dropped_responses_can_be_left_out(tmp_path, queries, plan):
    out = tmp_path / "samples.jsonl"
    _run(ScriptedGenerator(plan), queries, out, dropped_responses=False)
    dropped = read_jsonl(dropped_path(out))
    assert len(dropped) == 5 and all(set(r) == {"id", "reason", "labels"} for r in dropped)
    assert len(read_jsonl(out)) == 7  # what is kept does not change


def test_cli_sampling_flags_override_the_config_file(tmp_path, monkeypatch):
    import sami.generation.factory
    from sami.cli import main

    seen = []

    class Recording(ScriptedGenerator):
        def generate(self, prompts, **kwargs):
            seen.append(kwargs)
            return super().generate(prompts, **kwargs)

    monkeypatch.setattr(sami.generation.factory, "make_generator", lambda settings, **kw: Recording({}))
    cfg = tmp_path / "sampling.yaml"
    cfg.write_text("n_constitutions: 3\nmax_new_tokens: 20\ntemperature: 0.5\n", encoding="utf-8")
    out = tmp_path / "samples.jsonl"
    args = ["generate", "--queries", "hh_helpful_train", "--limit", "2", "--constitutions", "hh_opus"]
    args += ["--out", str(out), "--no-progress", "--config", str(cfg), "--max-new-tokens", "9"]
    assert main(args) == 0
    assert seen[0]["max_new_tokens"] == 9 and seen[0]["temperature"] == 0.5
    assert all(len(r["responses"]) == 3 for r in read_jsonl(out))
    cfg.write_text("n_constitutions: 1\n", encoding="utf-8")
    assert main(args) == 2  # SamiInputError naming the file and field


def test_interrupted_run_resumes_without_duplicates(tmp_path, queries, plan):
    out = tmp_path / "samples.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _run(InterruptAfter(ScriptedGenerator(plan), k=3), queries, out)
    # two chunks of two queries were finished and saved before Ctrl-C
    saved = read_jsonl(out) + read_jsonl(dropped_path(out))
    assert len(saved) == 4
    assert json.loads(stats_path(out).read_text())["done"] == 4

    resumed = ScriptedGenerator(plan)
    stats = _run(resumed, queries, out)
    assert len(resumed.prompts_seen) == 2 * (len(queries) - 4)  # only the missing queries were generated
    kept, dropped = read_jsonl(out), read_jsonl(dropped_path(out))
    ids = [r["id"] for r in kept + dropped]
    assert sorted(ids) == sorted(q.id for q in queries)  # every id exactly once
    assert stats["runs"] == 2 and stats["kept"] + stats["dropped"] == len(queries)

    # a third run has nothing to do and changes nothing
    again = ScriptedGenerator(plan)
    _run(again, queries, out)
    assert again.calls == 0 and read_jsonl(out) == kept

    # constitutions are drawn per query id: the resumed file equals an uninterrupted run
    fresh = tmp_path / "fresh" / "samples.jsonl"
    _run(ScriptedGenerator(plan), queries, fresh)
    assert sorted(read_jsonl(fresh), key=lambda r: r["id"]) == sorted(kept, key=lambda r: r["id"])


def test_paper_dialogue_scheme_and_seed(tmp_path, plan):
    qs = load_queries(QuerySource(path=str(bundled_queries_path("hh_harmless_train")), subset="harmless", limit=6))
    out = tmp_path / "samples.jsonl"
    _run(ScriptedGenerator({}), qs, out, scheme="paper-dialogue", seed=3)
    for r in read_jsonl(out):
        signs = Constitution.from_dict(r["constitutions"][1]).signs()
        assert signs["harmless"] is False  # harmless-base queries always negate harmlessness
        assert r["meta"]["subset"] == "harmless"
    other = tmp_path / "other.jsonl"
    _run(ScriptedGenerator({}), qs, other, scheme="paper-dialogue", seed=4)
    # another seed draws other negatives and principle orders
    assert [r["prompts"] for r in read_jsonl(out)] != [r["prompts"] for r in read_jsonl(other)]


def test_chat_style_renders_training_prompts(tmp_path, queries, default_tokenizer):
    class ChatEcho:
        def generate(self, prompts, **kwargs):
            assert all(isinstance(p, list) and p[0]["role"] == "system" for p in prompts)
            return [Completion(f"Answer under: {zlib.crc32(p[0]['content'].encode())}", 5, "stop") for p in prompts]

    out = tmp_path / "samples.jsonl"
    generate_samples(
        ChatEcho(),
        queries[:3],
        load_constitutions("hh_opus"),
        out,
        SamplingSettings(),
        template=get_template("dialogue", "chat"),
        tokenizer=default_tokenizer,
        progress=False,
    )
    kept = read_jsonl(out)
    assert len(kept) == 3
    for r in kept:
        assert all(isinstance(p, str) and p.rstrip().endswith("assistant") for p in r["prompts"])
        assert "<|im_start|>system" in r["prompts"][0]


def test_duplicate_ids_are_rejected(tmp_path, queries):
    with pytest.raises(SamiInputError, match="appears twice"):
        _run(ScriptedGenerator({}), [queries[0], queries[0]], tmp_path / "s.jsonl")


def test_progress_bar_and_summary_table(tmp_path, queries, plan):
    from rich.console import Console

    console = Console(record=True, width=120, force_terminal=False)
    _run(ScriptedGenerator(plan), queries, tmp_path / "samples.jsonl", progress=True, console=console)
    text = console.export_text()
    assert "dropped: refusal:I'm sorry" in text and "kept" in text


@pytest.mark.slow
def test_cli_generates_with_the_default_model(tmp_path, default_model_path):
    from sami.cli import main

    out = tmp_path / "run" / "samples.jsonl"
    args = ["generate", "--queries", str(bundled_queries_path("hh_helpful_test")), "--limit", "3"]
    args += ["--constitutions", "hh_opus", "--model", str(default_model_path), "--max-new-tokens", "12"]
    args += ["--out", str(out), "--no-progress", "--batch-size", "6"]
    assert main(args) == 0
    kept, dropped = read_jsonl(out), read_jsonl(dropped_path(out))
    assert len(kept) + len(dropped) == 3
    stats = json.loads(stats_path(out).read_text())
    assert stats["tokens"] > 0 and stats["done"] == 3
    for r in kept:
        assert len(r["responses"]) == 2 and all(0 < n <= 12 for n in r["meta"]["num_tokens"])


def test_resuming_into_a_file_of_other_settings_is_refused(tmp_path, queries, plan):
    """A half-written samples file of one seed (or temperature) is not topped up by a run of another: the file
    would mix records of both. The same settings resume as before."""
    out = tmp_path / "samples.jsonl"
    with pytest.raises(KeyboardInterrupt):
        _run(InterruptAfter(ScriptedGenerator(plan), k=2), queries, out, seed=1)
    before = out.read_bytes()
    for other in ({"seed": 2}, {"temperature": 0.3, "seed": 1}):
        generator = ScriptedGenerator(plan)
        with pytest.raises(SamiInputError, match=r"written with other settings \((sampling|seed) changed\)"):
            _run(generator, queries, out, **other)
        assert generator.calls == 0 and out.read_bytes() == before
    stats = _run(ScriptedGenerator(plan), queries, out, seed=1)
    assert stats["done"] == len(queries)
