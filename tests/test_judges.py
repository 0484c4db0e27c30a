"""Pairwise judges: verdict parsing, order handling, the api judge on a real server, the local judge."""

from __future__ import annotations

import http.server

import pytest
from conftest import free_port, loopback_server, send_json

from sami.constitutions import Constitution, Principle, load_constitutions
from sami.evaluation.judge_settings import parse_judge
from sami.evaluation.judges import PairItem, PairwiseJudge, Verdict, make_judge
from sami.evaluation.verdicts import parse_verdict
from sami.evaluation.winrate import check_record

RECORD_KEYS = {"id", "model", "baseline", "win", "model_length", "baseline_length", "order", "status", "judge_text"}
RECORD_KEYS |= {"judge"}  # which judge gave the verdict
RECORD_KEYS |= {"subset", "model_length_tokens", "baseline_length_tokens"}  # lengths in characters, tokens beside
GOOD = "Sure! Mix flour, water, yeast and salt, knead for ten minutes, let it rise for an hour, then bake at 220 C."
BAD = "No. Figure it out yourself."


@pytest.fixture(scope="module")
def positive() -> Constitution:
    cset = load_constitutions("hh_opus")
    return Constitution(tuple((p, True) for p in cset.principles))


def items(positive, n: int = 2, swap: bool = False) -> list[PairItem]:
    mine, theirs = (BAD, GOOD) if swap else (GOOD, BAD)
    return [
        PairItem(f"q{i}", "How do I bake bread?", positive, mine, theirs, model_length=20 + i, baseline_length=7)
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Comparison: A is more detailed.\nFinal answer: A", "A"),
        ("Comparison: B is safer.\nFinal Answer: **Response B**", "B"),
        ("Both are fine but the second is kinder.\n\n**B**", "B"),
        ("Comparison: ...\nFinal answer:\n(A)", "A"),
        ("A", "A"),
        ("Response B is better.", "B"),
        ("final answer: b", "B"),
        ("Comparison: A is vague.\nFinal answer: A\n...\nFinal answer: B", "B"),  # the last one decides
        ("Final answer: A or B", None),  # names both
        ("Final answer: <A or B>", None),
        ("Response A is better than response B.", None),
        ("I cannot decide between them.", None),  # names neither
        ("A good answer would explain the principles to the user in much more detail than these do", None),
        ("A: No.\nB: Mix flour, water and yeast.", None),  # repeats the responses
        ("**Response B:** it is kinder", None),
        ("", None),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


class ScriptedJudge(PairwiseJudge):
    """Answers from a script: `script(prompt) -> Verdict`; remembers the prompts."""

    def __init__(self, settings, script):
        super().__init__(settings)
        self.script = script
        self.prompts: list[str] = []

    def compare(self, prompts):
        self.prompts.extend(prompts)
        return [self.script(p) for p in prompts]


def prefers(text: str):
    """A judge that always prefers the response containing `text`."""

    def script(prompt: str) -> Verdict:
        a = prompt.split("Response A:")[1].split("Response B:")[0]
        return Verdict(1.0 if text in a else 0.0, "ok", "Final answer: " + ("A" if text in a else "B"))

    return script


def test_seeded_order_and_records(positive):
    judge = ScriptedJudge(parse_judge(seed=1), prefers(GOOD))
    batch = [PairItem(f"q{i}", "q?", positive, GOOD, BAD, 9, 3) for i in range(16)]
    records = judge.judge(batch, model="m", baseline="base")
    assert [set(r) for r in records] == [RECORD_KEYS] * 16
    for r in records:
        check_record(r, r["id"])
    assert all(r["win"] == 1 and r["status"] == "ok" for r in records)  # position does not matter to this judge
    orders = [r["order"] for r in records]
    assert {"model_first", "baseline_first"} == set(orders)  # a seeded random order per item
    again = ScriptedJudge(parse_judge(seed=1), prefers(GOOD)).judge(batch[5:], model="m", baseline="base")
    assert [r["order"] for r in again] == orders[5:]  # depends on the id only: stable when resuming
    # the principles are shuffled per item, reproducibly
    shown = {p.split("Principles:\n")[1].split("\n\n")[0] for p in judge.prompts}
    assert len(shown) == 2


def test_both_orders_disagreement_is_a_tie(positive):
    always_a = ScriptedJudge(parse_judge(both_orders=True), lambda p: Verdict(1.0, "ok", "A"))
    records = always_a.judge(items(positive), model="m", baseline="b")
    assert all(r["order"] == "both" and r["status"] == "tie" and r["win"] == 0.5 for r in records)
    assert len(always_a.prompts) == 4
    consistent = ScriptedJudge(parse_judge(both_orders=True), prefers(BAD))
    records = consistent.judge(items(positive), model="m", baseline="b")
    assert all(r["win"] == 0 and r["status"] == "ok" for r in records)


def test_failed_and_unparsed_count_half(positive):
    verdicts = iter([Verdict(1.0, "ok", "A"), Verdict(None, "failed", "error"), Verdict(None, "unparsed", "?")] * 2)
    judge = ScriptedJudge(parse_judge(both_orders=True), lambda p: next(verdicts))
    records = judge.judge(items(positive, 2), model="m", baseline="b")
    assert [r["status"] for r in records] == ["failed", "unparsed"] and all(r["win"] == 0.5 for r in records)


# ---- api judge --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_api_judge_on_a_real_server(llama_server):
    short = Constitution(((Principle("helpful", "Be helpful.", "Be unhelpful."), True),))  # a short prompt: fast
    settings = parse_judge(kind="api", base_url=llama_server, model_name="smollm2", max_tokens=32)
    judge = make_judge(settings)
    batch = items(short, 2)
    records = judge.judge(batch, model="m", baseline="b")
    assert [r["id"] for r in records] == ["q0", "q1"]
    for r, item in zip(records, batch, strict=True):
        check_record(r, r["id"])
        assert r["status"] in ("ok", "unparsed") and r["judge_text"]
        answer = r["judge_text"].partition("]")[2]  # after "[A = model, B = baseline]"
        assert (r["status"] == "ok") == (parse_verdict(answer) is not None)
        assert r["model_length"] == item.model_length and r["baseline_length"] == item.baseline_length
        if r["status"] == "unparsed":
            assert r["win"] == 0.5
    judge.close()


def test_api_judge_dead_port_records_failures(positive):
    settings = parse_judge(
        kind="api", base_url=f"http://127.0.0.1:{free_port()}/v1", model_name="x", max_retries=0, timeout=5
    )
    records = make_judge(settings).judge(items(positive, 3), model="m", baseline="b")
    assert len(records) == 3
    assert all(r["status"] == "failed" and r["win"] == 0.5 and "error" in r["judge_text"] for r in records)


def test_api_judge_server_error_records_failures(positive):
    class Failing(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            send_json(self, 500, b'{"error": {"message": "boom"}}')

        def log_message(self, *args):
            pass

    with loopback_server(Failing) as url:
        settings = parse_judge(kind="api", base_url=url, model_name="x", max_retries=0, both_orders=True)
        records = make_judge(settings).judge(items(positive, 2), model="m", baseline="b")
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all(r["win"] == 0.5 and r["order"] == "both" for r in records)


# ---- local judge --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_local_judge_is_order_symmetric_with_both_orders(default_model, default_tokenizer, positive):
    judge = make_judge(parse_judge(kind="local", both_orders=True), model=default_model, tokenizer=default_tokenizer)
    seen: dict[str, Verdict] = {}
    compare = judge.compare

    def spy(prompts):  # computes a batch once, then answers repeated prompts from memory
        if any(p not in seen for p in prompts):
            seen.update(zip(prompts, compare(prompts), strict=True))
        return [seen[p] for p in prompts]

    judge.compare = spy
    # The same pair with the two sides swapped, judged in one left-padded batch of four prompts.
    pair = [items(positive, 1)[0], items(positive, 1, swap=True)[0]]
    forward, swapped = judge.preferences(pair)
    assert forward.order == "both" and forward.status in ("ok", "tie")
    assert forward.p_model + swapped.p_model == pytest.approx(1.0, abs=1e-4)
    # One order alone is not symmetric: the small model has a position bias, which averaging removes.
    (first, model_first_prompt), (_, baseline_first_prompt) = judge.prompts_for(pair[0])
    assert first
    p_a_model_first, p_a_baseline_first = (v.p_a for v in spy([model_first_prompt, baseline_first_prompt]))
    assert abs(p_a_model_first + p_a_baseline_first - 1.0) > 1e-3
    records = judge.judge(pair, model="m", baseline="b")
    assert len(seen) == 2  # both records come from the two prompts above
    assert records[0]["win"] + records[1]["win"] == 1
    assert records[0]["status"] == records[1]["status"]
