"""The principle writer: parsing, validation, retries, the real default model and the CLI."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from sami.cli import main
from sami.constitutions import ConstitutionSet, load_constitutions
from sami.errors import SamiInputError
from sami.principle_writer import (
    PrincipleRequest,
    WriterParseError,
    infer_task_type,
    parse_writer_answer,
    write_principles,
    writer_messages,
)


@dataclass
class FakeCompletion:
    text: str
    num_tokens: int = 0
    finish_reason: str = "stop"
    error: str | None = None
    ended_with_eos: bool | None = None


class ScriptedGenerator:
    """Answers each call from a list of scripted answers (one string per prompt, or a function of the prompt)."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls: list[dict] = []

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_p=1.0, stop=None, seed=None):
        self.calls.append({"n": len(prompts), "temperature": temperature, "seed": seed, "prompts": prompts})
        answer = self.answers[min(len(self.calls), len(self.answers)) - 1]
        return [FakeCompletion(answer(p) if callable(answer) else answer) for p in prompts]


GOOD = "Principle: Summaries should be short.\nAntithesis: Summaries should be long and rambling."


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        "principle: Summaries should be short.\nantithesis: Summaries should be long and rambling.",
        "**Principle:** Summaries should be short.\n**Antithesis:** Summaries should be long and rambling.",
        "Sure!\n1. Principle: 'Summaries should be short.'\n2. Antithesis: \"Summaries should be long and rambling.\"",
        "Principle:\nSummaries should be short.\n\nAntithesis:\nSummaries should be long and rambling.",
        "Principle: Summaries should be short. Antithesis: Summaries should be long and rambling.",
        '{"principle": "Summaries should be short.", "antithesis": "Summaries should be long and rambling."}',
        '```json\n{"Principle": "Summaries should be short.",\n'
        ' "Antithesis": "Summaries should be long and rambling."}\n```',
    ],
)
def test_parser_accepts_common_answer_shapes(text):
    p = parse_writer_answer(text, "concise")
    assert (p.name, p.principle, p.antithesis) == (
        "concise",
        "Summaries should be short.",
        "Summaries should be long and rambling.",
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Principle: Summaries should be short.", "no 'Antithesis:' line"),
        ("Antithesis: Summaries should be long.", "no 'Principle:' line"),
        ("Principle: Be short.\nAntithesis:", "no 'Antithesis:' line"),
        ("Principle: Summaries should be short.\nAntithesis: Summaries should be SHORT!", "repeats the principle"),
        ("Principle: Summaries are short.\nAntithesis: Summaries are short, and clear.", "repeats the principle"),
        ("Principle: Be short and clear.\nAntithesis: Be short.", "repeats the principle"),
        ("Principle: [insert principle here]\nAntithesis: Be long.", "template text '[insert'"),
        ("Principle: Be short.\nAntithesis: <one sentence>", "template text '<one sentence'"),
        ("Principle: Short.\nAntithesis: Summaries should be long.", "not a sentence"),
        ("I cannot help with that.", "no 'Principle:' line"),
    ],
)
def test_parser_rejects_bad_answers(text, problem):
    with pytest.raises(WriterParseError, match=re.escape(problem)):
        parse_writer_answer(text, "concise")


def test_antithesis_may_share_a_word_prefix():
    p = parse_writer_answer("Principle: Be short.\nAntithesis: Be shorter than nothing, never.", "x")
    assert p.antithesis == "Be shorter than nothing, never."


def test_requests_and_prompt():
    assert PrincipleRequest.parse("comprehensive: covers key points") == PrincipleRequest(
        "comprehensive", "covers key points"
    )
    assert PrincipleRequest.parse(" concise ") == PrincipleRequest("concise")
    with pytest.raises(SamiInputError, match="empty name"):
        PrincipleRequest.parse(": no name")
    request = PrincipleRequest("comprehensive", "covers key points")
    messages = writer_messages("summarize posts", request, "Summaries should")
    assert messages[0]["role"] == "system" and messages[-1] == {
        "role": "user",
        "content": "Task: summarize posts\nPrinciple: comprehensive (covers key points)\nBegin with: Summaries should",
    }
    # the worked examples are themselves valid answers
    for m in messages[2:-1:2]:
        parse_writer_answer(m["content"], "example")
    assert infer_task_type("Summarize Reddit posts") == "summarization"
    assert infer_task_type("chat with users") == "dialogue"


def test_bad_answers_are_retried_then_fail_with_a_clear_message():
    gen = ScriptedGenerator(["Principle: Be kind.\nAntithesis: Be kind."])
    with pytest.raises(SamiInputError) as e:
        write_principles(gen, "chat with users", ["kind"], retries=2, seed=7)
    message = str(e.value)
    assert "principle 'kind'" in message and "3 attempts" in message and "repeats the principle" in message
    assert len(gen.calls) == 3
    assert gen.calls[0]["temperature"] == 0.0  # greedy first, then sampled retries with distinct seeds
    assert all(c["temperature"] > 0 for c in gen.calls[1:])
    assert [c["seed"] for c in gen.calls] == [7, 8, 9]


def test_only_failed_principles_are_retried():
    def answer(prompt):
        asked = prompt[-1]["content"]
        if "Principle: kind" in asked:
            return "Principle: Responses should be kind.\nAntithesis: Responses should be cruel."
        return "Principle: [insert]\nAntithesis: x"

    gen = ScriptedGenerator([answer, "Principle: Responses should be honest.\nAntithesis: Responses should lie."])
    cset = write_principles(gen, "chat with users", ["kind", "honest: tells the truth"], retries=1, writer="fake")
    assert [c["n"] for c in gen.calls] == [2, 1]
    assert cset.names == ["kind", "honest"]
    assert cset.get("honest").antithesis == "Responses should lie."
    assert cset.task == "dialogue" and cset.writer.startswith("fake")


def test_writer_input_errors():
    gen = ScriptedGenerator([GOOD])
    with pytest.raises(SamiInputError, match="repeated"):
        write_principles(gen, "x", ["a", "a: again"])
    with pytest.raises(SamiInputError, match="task"):
        write_principles(gen, " ", ["a"])
    with pytest.raises(SamiInputError, match="at least one principle"):
        write_principles(gen, "x", [])
    assert gen.calls == []


@pytest.fixture
def one_thread():
    """Torch on one thread for this test: on a busy 2-core machine two threads contend and run ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_writer_on_the_default_model_writes_a_valid_file(default_model, default_tokenizer, tmp_path, one_thread):
    from sami.generation import parse_generation
    from sami.generation.factory import make_generator

    generator = make_generator(parse_generation(seed=0), model=default_model, tokenizer=default_tokenizer)
    cset = write_principles(
        generator,
        "summarize Reddit posts",
        ["concise", "comprehensive: covers the key points"],
        seed=0,
        writer="SmolLM2-135M-Instruct",
    )
    path = cset.save(tmp_path / "written.json")
    loaded = ConstitutionSet.load(path)
    assert loaded == cset
    assert loaded.task == "summarization" and loaded.names == ["concise", "comprehensive"]
    for p in loaded.principles:
        assert p.principle.strip() and p.antithesis.strip() and p.principle != p.antithesis
        assert "[insert" not in p.principle + p.antithesis


def test_cli_write_saves_and_prints_a_table(tmp_path, monkeypatch, capsys):
    import sami.generation.factory

    gen = ScriptedGenerator([GOOD])
    monkeypatch.setattr(sami.generation.factory, "make_generator", lambda settings, **_: gen)
    out = tmp_path / "mine.yaml"
    code = main(["principles", "write", "--task", "summarize posts", "--principle", "concise", "--out", str(out)])
    assert code == 0
    cset = load_constitutions(str(out))
    assert cset.names == ["concise"] and cset.task == "summarization"
    printed = capsys.readouterr().out
    assert "concise" in printed and "rambling" in printed


def test_cli_reports_writer_failure_and_shows_files(tmp_path, monkeypatch, capsys):
    import sami.generation.factory

    monkeypatch.setattr(
        sami.generation.factory, "make_generator", lambda settings, **_: ScriptedGenerator(["nonsense"])
    )
    args = ["principles", "write", "--task", "t", "--principle", "p", "--retries", "1"]
    args += ["--out", str(tmp_path / "x.json")]
    assert main(args) == 2
    assert "principle 'p': no valid answer from the writer model in 2 attempts" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    assert main(["principles", "show", "hh_opus"]) == 0
    assert "harmless" in capsys.readouterr().out


def test_cli_write_reads_a_settings_file_and_flags_win(tmp_path, monkeypatch, capsys):
    import sami.generation.factory

    made = []

    def make(settings, **_):
        made.append(settings)
        return ScriptedGenerator([GOOD])

    monkeypatch.setattr(sami.generation.factory, "make_generator", make)
    cfg = tmp_path / "writer.yaml"
    cfg.write_text("task: summarize posts\nprinciples: [verbose]\nmodel: from-file\n", encoding="utf-8")
    out = tmp_path / "mine.json"
    args = ["principles", "write", "--config", str(cfg), "--principle", "concise", "--no-contrast"]
    assert main([*args, "--out", str(out)]) == 0
    assert load_constitutions(str(out)).names == ["concise"]
    assert made[0].model == "from-file" and made[0].backend == "hf"
    assert main(["principles", "write", "--principle", "concise", "--out", str(out)]) == 2
    assert "command line: task: required field is missing" in capsys.readouterr().err
