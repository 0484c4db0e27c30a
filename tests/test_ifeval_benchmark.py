"""`sami benchmark ifeval`: a hand-made responses file gives known accuracies; generation resumes."""

from __future__ import annotations

import json

import pytest

from sami.cli import main
from sami.generation.base import Completion
from sami.ifeval import load_inputs
from sami.ifeval.benchmark import IFEvalSettings, run_ifeval

PROMPTS = {inp.key: inp.prompt for inp in load_inputs()}


def handmade(path):
    """Three of IFEval's prompts with responses whose verdicts follow from IFEval's semantics:
    1001 (no_comma): followed. 1005 (at least 12 placeholders): 11, not followed, loose neither.
    1000 (no_comma, >= 3 highlights, >= 300 words): a first line with a comma fails strict no_comma only; the
    loose variant without the first line follows all three."""
    body = " ".join(["word"] * 300) + " *one* *two* *three*"
    records = [
        {"prompt": PROMPTS["1001"], "response": "Day one we sail to Kyoto and then we rest."},
        {"prompt": PROMPTS["1005"], "response": " ".join(f"[field{i}]" for i in range(11))},
        {"prompt": PROMPTS["1000"], "response": "Sure, here it is:\n" + body},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_responses_file_gives_known_accuracies(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["benchmark", "ifeval", "--responses", str(handmade(tmp_path / "r.jsonl")), "--out", str(out),
                 "--json"]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["num_prompts"] == 3 and results["num_instructions"] == 5 and not results["all_prompts"]
    assert results["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert results["inst_level_strict_acc"] == pytest.approx(3 / 5)
    assert results["prompt_level_loose_acc"] == pytest.approx(2 / 3)
    assert results["inst_level_loose_acc"] == pytest.approx(4 / 5)
    assert results["per_instruction"]["punctuation:no_comma"] == {"n": 2, "strict_acc": 0.5, "loose_acc": 1.0}
    strict = [json.loads(line) for line in (out / "eval_results_strict.jsonl").read_text().splitlines()]
    assert set(strict[0]) >= {"prompt", "response", "instruction_id_list", "follow_all_instructions",
                              "follow_instruction_list"}  # fmt: skip
    assert [r["follow_instruction_list"] for r in strict] == [[False, True, True], [True], [False]]  # input order
    loose = [json.loads(line) for line in (out / "eval_results_loose.jsonl").read_text().splitlines()]
    assert [r["follow_all_instructions"] for r in loose] == [True, True, False]
    assert json.loads(capsys.readouterr().out)["inst_level_loose_acc"] == pytest.approx(0.8)


def test_bad_responses_file_is_an_input_error(tmp_path, capsys):
    bad = tmp_path / "r.jsonl"
    bad.write_text(json.dumps({"prompt": "not an IFEval prompt", "response": "x"}) + "\n")
    assert main(["benchmark", "ifeval", "--responses", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"{bad}:1: prompt: not one of the IFEval prompts" in capsys.readouterr().err
    assert main(["benchmark", "ifeval", "--out", str(tmp_path / "o")]) == 2  # neither --model nor --responses


class FlakyGenerator:
    """Answers every prompt with its own text; raises on call `fail_on` (an interruption)."""

    def __init__(self, fail_on: int | None = None):
        self.calls, self.prompts, self.fail_on = 0, 0, fail_on

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, **_):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        assert temperature == 0.0 and max_new_tokens == 64
        self.prompts += len(prompts)
        return [Completion(p[0]["content"], 5, "stop") for p in prompts]


def test_generation_resumes_and_refuses_other_settings(tmp_path):
    settings = IFEvalSettings(out=str(tmp_path), model="fake", limit=5, chunk_size=2, max_new_tokens=64)
    with pytest.raises(KeyboardInterrupt):
        run_ifeval(settings, FlakyGenerator(fail_on=2), progress=False)
    assert len((tmp_path / "responses.jsonl").read_text().splitlines()) == 2  # the first chunk was kept
    again = FlakyGenerator()
    results = run_ifeval(settings, again, progress=False)
    assert again.prompts == 3 and results["num_prompts"] == 5  # only the missing three were generated
    # repeating the prompt follows repeat_prompt (prompt 1012 asks for it) -- a real verdict on generated text
    assert results["per_instruction"]["combination:repeat_prompt"]["strict_acc"] == 1.0
    with pytest.raises(Exception, match="generated with"):
        run_ifeval(settings.model_copy(update={"max_new_tokens": 32}), FlakyGenerator(), progress=False)


def test_generation_through_a_real_server(tmp_path, llama_server, capsys):
    """`--base-url`: the bundled model served by llama.cpp answers through its chat endpoint; resumable files."""
    out = tmp_path / "served"
    args = ["benchmark", "ifeval", "--base-url", llama_server, "--limit", "2", "--max-new-tokens", "24",
            "--out", str(out), "--no-progress", "--json"]  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "responses.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == ["1000", "1001"]
    assert all(r["response"].strip() and 0 < r["num_tokens"] <= 24 for r in records)
    generation = json.loads((out / "generation.json").read_text())
    assert llama_server in generation["model"] and generation["max_new_tokens"] == 24
    assert json.loads(capsys.readouterr().out)["num_prompts"] == 2
    # a model and a server at once is refused in one line
    assert main(["benchmark", "ifeval", "--base-url", llama_server, "--model", "default", "--out", str(out)]) == 2
    assert "exactly one of --model, --base-url and --responses" in capsys.readouterr().err
