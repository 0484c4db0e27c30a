"""`judge.preset: paper`: the authors' judge protocol as settings, and the prompt it sends."""

from __future__ import annotations

import random

from sami.constitutions import Constitution, load_constitutions
from sami.evaluation.judge_prompts import PAPER_JUDGE_PROMPT, PAPER_JUDGE_SYSTEM, judge_prompt
from sami.evaluation.judge_settings import parse_judge
from sami.evaluation.judges import PairItem, make_judge
from sami.openai_client import Reply


class _Client:
    """A fake `sami.openai_client.OpenAIClient` recording the requests; answers with a comparison and a final
    line."""

    def __init__(self, answer: str):
        self.answer, self.calls = answer, []

    def chat(self, messages, **kwargs):
        self.calls.append({"messages": messages, **kwargs})
        return Reply(self.answer, "stop")

    def map(self, fn, items):
        return [fn(item, None) for item in items]

    def close(self):
        pass


def test_paper_preset_sets_the_protocol_and_fields_beside_it_win():
    s = parse_judge(preset="paper", model_name="gpt-4-0613")
    assert (s.kind, s.temperature, s.max_tokens, s.both_orders) == ("api", 0.0, 200, False)
    assert s.prompt == PAPER_JUDGE_PROMPT and s.system == PAPER_JUDGE_SYSTEM
    assert parse_judge(preset="paper", model_name="x", max_tokens=64).max_tokens == 64
    assert parse_judge(**{"preset": "paper", "model_name": "x"}).identity()["preset"] == "paper"
    assert s.identity() != parse_judge(preset="paper", model_name="gpt-4-0613", system="other").identity()


def test_paper_preset_prompt_as_sent():
    cset = load_constitutions("hh_opus")
    positive = Constitution(tuple((p, True) for p in cset.principles))
    settings = parse_judge(preset="paper", model_name="gpt-4-0613", seed=7)
    client = _Client("Comparison: B is more helpful.\n\nFinal Response: B")
    judge = make_judge(settings, client=client)
    item = PairItem("q1", "How do I bake bread?", positive, "Mine.", "Theirs.", 5, 7)
    [record] = judge.judge([item], model="m", baseline="base", task="dialogue")
    [call] = client.calls
    assert call["temperature"] == 0.0 and call["max_tokens"] == 200 and call["model"] == "gpt-4-0613"
    system, user = call["messages"]
    assert system == {"role": "system", "content": PAPER_JUDGE_SYSTEM}
    rng = random.Random("7:q1")  # the per-item seed: principles shuffled, then the A/B order
    shuffled = positive.shuffled(rng).render()
    model_first = rng.random() < 0.5
    a, b = ("Mine.", "Theirs.") if model_first else ("Theirs.", "Mine.")
    assert user["role"] == "user"
    assert user["content"] == judge_prompt(PAPER_JUDGE_PROMPT, "dialogue", shuffled, item.query, a, b)
    assert user["content"].startswith("For the following query to a chatbot assistant, which response is more")
    assert f"### Principles\n{shuffled}\n\n### Responses\nResponse A: {a}\nResponse B: {b}\n" in user["content"]
    assert user["content"].endswith('Final Response: <"A" or "B">')
    assert record["win"] == (0 if model_first else 1) and record["status"] == "ok"
    assert record["order"] == ("model_first" if model_first else "baseline_first")


def test_paper_preset_ties_and_unparsed_count_half():
    cset = load_constitutions("hh_opus")
    positive = Constitution(tuple((p, True) for p in cset.principles))
    judge = make_judge(parse_judge(preset="paper", model_name="x"), client=_Client("Comparison: both fine."))
    [record] = judge.judge([PairItem("q", "Hi?", positive, "a", "b")], model="m", baseline="base")
    assert record["win"] == 0.5 and record["status"] == "unparsed"
