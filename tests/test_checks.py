"""Verifiable checks (IFEval ids and semantics), checks on principles, the rules judge and adherence intervals."""

from __future__ import annotations

import json

import pytest

from sami.checks import count_sentences, count_words, parse_check, parse_check_set
from sami.constitutions import Constitution, ConstitutionSet, Principle, load_constitutions
from sami.errors import SamiInputError
from sami.evaluation.adherence import AdherenceItem, adherence, score_responses, wilson_interval, with_change
from sami.evaluation.judge_settings import parse_judge
from sami.evaluation.judges import PairItem, make_judge
from sami.evaluation.winrate import check_record, summarize


def check(cid: str, **kwargs):
    return parse_check({"id": cid, "kwargs": kwargs})


# ---- counting and each check at its boundaries --------------------------------------------------------
@pytest.mark.parametrize(
    "response, relation, n, expected",
    [  # IFEval's instructions_test.py cases (4 sentences each)
        ("xx,x. xx,x! xx/x. x{x}x?", "less than", 4, False),
        ("xxxx. xx,x! xxxx. x(x)x?", "less than", 5, True),
        ("xxxx. xx,x! xx|x. x&x x?", "at least", 4, True),
        ("xx-x. xx,x! xx}x. x,xx?", "at least", 5, False),
    ],
)
def test_number_sentences_ifeval_examples(response, relation, n, expected):
    assert check("length_constraints:number_sentences", num_sentences=n, relation=relation)(response) is expected


def test_number_sentences_boundary_exactly_n():
    three = "It rains. Take a coat! Is it cold?"
    assert count_sentences(three) == 3
    assert count_sentences("Dr. Smith paid 3.5 dollars at shop.com today.") == 1  # abbreviations, decimals, sites
    less = check("length_constraints:number_sentences", num_sentences=3, relation="less than")
    at_least = check("length_constraints:number_sentences", num_sentences=3, relation="at least")
    assert not less(three) and at_least(three)  # exactly N: "less than" fails, "at least" holds
    assert less("It rains. Take a coat!") and not at_least("It rains. Take a coat!")


def test_number_words_ifeval_examples_and_boundary():
    one = "\n  d3sCRi7 lArge lAnguagE M0del w1tH 20 w0RdS."
    two = (
        "\n  L4RGE L4NGU4GE M0DEL: AI syst3m th4t und3rstands, g3n3r4tes, or tr4nsforms\n"
        "  l4ngu4g3 b4s3d on pr3vious l3arning & d4t4."
    )
    assert check("length_constraints:number_words", num_words=8, relation="less than")(one)
    assert not check("length_constraints:number_words", num_words=16, relation="less than")(two)
    assert check("length_constraints:number_words", num_words=16, relation="at least")(two)
    assert count_words("one two, three-four") == 4
    assert not check("length_constraints:number_words", num_words=4, relation="less than")("one two, three-four")
    assert check("length_constraints:number_words", num_words=4, relation="at least")("one two, three-four")


def test_bullet_lists_ifeval_examples():
    three = (
        "\n  Here are three markdown bullets:\n  - I am a large language model.\n  - I am trained on text.\n"
        "  -I am still under development."
    )
    paragraphs = "\n  Paragraph 1\n  ***\n  Paragraph 2\n  ***\n  Paragraph 3\n  * only one bullet point\n  "
    assert check("detectable_format:number_bullet_lists", num_bullets=3)(three)
    assert not check("detectable_format:number_bullet_lists", num_bullets=2)(three)  # exactly N
    assert check("detectable_format:number_bullet_lists", num_bullets=1)(paragraphs)  # *** is no bullet
    assert check("detectable_format:number_bullet_lists", num_bullets=0)("No list here, a * inline star.")


@pytest.mark.parametrize(
    "cid, kwargs, good, bad",
    [
        ("change_case:english_lowercase", {}, "all lowercase, even with 3 digits.", "Not lowercase."),
        (
            "keywords:forbidden_words",
            {"forbidden_words": ["HOUSE", "power"]},
            "Hitler was powerful.",  # whole words only: 'powerful' is not 'power'
            "The Nazis came to Power in 1933.",
        ),
        (
            "keywords:existence",
            {"keywords": ["romantic", "river", "Mona Lisa"]},
            "The romantic River Seine flows past the Louvre, where the mona lisa resides.",
            "Paris has a romantic river.",
        ),
        ("startend:end_checker", {"end_phrase": "?"}, 'Shall I go on?"  ', "That is all. Any questions? Bye."),
        ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"},
         "Done. is there anything else I can help with?", "Is there anything else I can help with? Done."),
        ("punctuation:no_comma", {}, "No commas here.", "One, two."),
        ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
        ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi.\n\nP. S. See you.", "Hi. PS see you."),
        ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "x\np.p.s what if", "x\nP.S. only"),
    ],
)  # fmt: skip
def test_each_check_on_positive_and_negative_examples(cid, kwargs, good, bad):
    c = check(cid, **kwargs)
    assert c(good) is True
    assert c(bad) is False


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"id": "keywords:key_sentences", "kwargs": {}}, "unknown check id"),  # disabled in IFEval
        ({"id": "length_constraints:number_words", "kwargs": {"num_words": 5}}, "missing kwarg(s) ['relation']"),
        ({"id": "length_constraints:number_words", "kwargs": {"num_words": 5, "relation": "at most"}}, "relation"),
        ({"id": "length_constraints:number_words", "kwargs": {"num_words": -1, "relation": "at least"}}, "num_words"),
        ({"id": "punctuation:no_comma", "kwargs": {"x": 1}}, "unknown kwarg(s) ['x']"),
        ({"id": "keywords:existence", "kwargs": {"keywords": []}}, "non-empty list"),
        ({"id": "punctuation:no_comma", "args": {}}, "unknown field(s) ['args']"),
        ("punctuation:no_comma", "expected a mapping"),
    ],
)
def test_bad_checks_are_refused(raw, message):
    with pytest.raises(SamiInputError, match=None) as e:
        parse_check_set(raw, "brief.check")
    assert message in str(e.value) and "brief.check" in str(e.value)


# ---- checks on principles, in constitution files ------------------------------------------------------
def _write(tmp_path, principles) -> str:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"task": "dialogue", "principles": principles}), encoding="utf-8")
    return str(path)


BRIEF = {
    "name": "brief",
    "principle": "Answer in one sentence.",
    "antithesis": "Answer at length.",
    "check": {"id": "length_constraints:number_sentences", "kwargs": {"num_sentences": 2, "relation": "less than"}},
}


def test_principle_checks_round_trip_and_antithesis_default(tmp_path):
    anti = {"id": "length_constraints:number_sentences", "kwargs": {"num_sentences": 4, "relation": "at least"}}
    cset = ConstitutionSet.load(_write(tmp_path, [BRIEF, {**BRIEF, "name": "long", "antithesis_check": anti}]))
    brief, long_ = cset.principles
    assert brief.holds("One.") is True and brief.holds("One. Two.") is False
    assert brief.holds("One. Two.", positive=False) is True  # antithesis = the check fails
    assert long_.holds("One. Two.", positive=False) is False  # antithesis_check overrides: at least 4
    assert long_.holds("One. Two. Three. Four.", positive=False) is True
    again = ConstitutionSet.from_dict(cset.to_dict())
    assert again.principles == cset.principles
    c = Constitution(((brief, True),))
    assert Constitution.from_dict(c.to_dict()).items[0][0].check == brief.check
    assert Principle("x", "a", "b").holds("anything") is None


@pytest.mark.parametrize(
    "change, message",
    [
        ({"check": {"id": "nope:nope", "kwargs": {}}}, "principles[0] (brief).check: unknown check id 'nope:nope'"),
        ({"check": {"id": "startend:end_checker", "kwargs": {}}}, "missing kwarg(s) ['end_phrase']"),
        ({"check": None, "antithesis_check": BRIEF["check"]}, "needs a `check`"),
    ],
)
def test_bad_principle_checks_name_the_file_and_principle(tmp_path, change, message):
    path = _write(tmp_path, [{**BRIEF, **change}])
    with pytest.raises(SamiInputError) as e:
        load_constitutions(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_cli_exit_2_on_a_bad_check(tmp_path, capsys):
    from sami.cli import main

    path = _write(tmp_path, [{**BRIEF, "check": {"id": "nope:nope", "kwargs": {}}}])
    responses = tmp_path / "r.jsonl"
    responses.write_text('{"id": "a", "response": "Hi."}\n', encoding="utf-8")
    assert main(["check", path, str(responses)]) == 2
    err = capsys.readouterr().err.strip()
    assert "brief" in err and path in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_bundled_demo_constitution_is_checkable():
    cset = load_constitutions("demo_checks")
    assert len(cset.principles) >= 2 and all(p.checkable for p in cset.principles)


# ---- the rules judge -------------------------------------------------------------------------------------
QUESTION = {
    "name": "question",
    "principle": "End with a question to the user.",
    "antithesis": "End with a statement.",
    "check": {"id": "startend:end_checker", "kwargs": {"end_phrase": "?"}},
}
BRIEF_QUESTION = ConstitutionSet.from_dict({"task": "dialogue", "principles": [BRIEF, QUESTION]})


@pytest.fixture
def demo_positive() -> Constitution:
    return Constitution(tuple((p, True) for p in BRIEF_QUESTION.principles))


def test_rules_judge_verdicts_and_ties(demo_positive):
    brief_question = "Shall I book it for you?"
    brief_only = "It opens at nine."
    long_question = "It opens at nine. It closes at five. Shall I book it?"
    long_statement = "It opens at nine. It closes at five."
    pairs = [
        (brief_question, brief_only, 1),  # 2 vs 1
        (brief_only, brief_question, 0),  # 1 vs 2
        (brief_only, long_question, 0.5),  # 1 vs 1: a tie
        (long_statement, long_question, 0),  # 0 vs 1
        (long_statement, "", 0),  # an empty response is one sentence-free "short" answer: 0 vs 1
    ]
    items = [
        PairItem(f"q{i}", "When does it open?", demo_positive, a, b, model_length=len(a), baseline_length=len(b))
        for i, (a, b, _) in enumerate(pairs)
    ]
    judge = make_judge(parse_judge(kind="rules"))
    records = judge.judge(items, model="m", baseline="base")
    assert [r["win"] for r in records] == [w for *_, w in pairs]
    assert [r["status"] for r in records] == ["ok", "ok", "tie", "ok", "ok"]
    for i, r in enumerate(records):
        check_record(r, f"record {i}")
        assert r["judge"]["kind"] == "rules"
    assert "model satisfies 2/2" in records[0]["judge_text"]
    summary = summarize(records)
    assert summary["win_rate"] == pytest.approx(1.5 / 5) and summary["ties"] == 1


def test_rules_judge_needs_a_check():
    plain = Constitution(((Principle("kind", "Be kind.", "Be unkind."), True),))
    judge = make_judge(parse_judge(kind="rules"))
    with pytest.raises(SamiInputError, match="no principle with a `check`"):
        judge.judge([PairItem("q", "x", plain, "a", "b")], model="m", baseline="base")


# ---- adherence ------------------------------------------------------------------------------------------
def test_wilson_interval_known_values():
    assert wilson_interval(5, 10) == pytest.approx([0.2366, 0.7634], abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx([0.0, 0.2775], abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx([0.7225, 1.0], abs=1e-4)
    assert wilson_interval(81, 263) == pytest.approx([0.2553, 0.3662], abs=1e-4)
    assert wilson_interval(0, 0) is None


def test_adherence_counts_per_principle_subset_and_overall(demo_positive):
    anti = demo_positive.flipped()
    rows = [  # (subset, response under +, response under -)
        ("helpful", "Want more?", "Long. Very long. The end."),  # + both hold; - both hold
        ("helpful", "It is nine.", "Long. Very long. Really?"),  # + brief only; - brief-antithesis only
        ("harmless", "No. Why?", "Short."),  # + question only; - question-antithesis only
        ("harmless", "Sure?", "Sure. Fine. Ok."),
    ]
    items = [AdherenceItem(f"q{i}", s, demo_positive, a, anti, b) for i, (s, a, b) in enumerate(rows)]
    result = adherence(items)
    assert result["n"] == 4
    assert result["positive"] == pytest.approx(2 / 4) and result["antithesis"] == pytest.approx(2 / 4)
    assert result["positive_ci95"] == pytest.approx(wilson_interval(2, 4))
    assert result["by_principle"]["brief"]["positive"] == pytest.approx(3 / 4)
    assert result["by_principle"]["question"]["positive"] == pytest.approx(3 / 4)
    assert result["by_principle"]["brief"]["antithesis"] == pytest.approx(3 / 4)
    assert result["by_principle"]["question"]["antithesis"] == pytest.approx(3 / 4)
    assert result["by_subset"]["helpful"]["positive"] == pytest.approx(1 / 2)
    assert result["by_subset"]["harmless"]["n"] == 2
    later = with_change(result, {**result, "positive": 0.25, "by_principle": {"brief": {"positive": 0.5}}})
    assert later["change_positive"] == pytest.approx(0.25)
    assert later["by_principle"]["brief"]["change_positive"] == pytest.approx(0.25)
    assert later["by_principle"]["question"]["change_positive"] is None
    plain = Constitution(((Principle("kind", "Be kind.", "Be unkind."), True),))
    assert adherence([AdherenceItem("q", "s", plain, "a", plain.flipped(), "b")]) is None


def test_score_responses_uses_the_record_constitution(demo_positive):
    cset = BRIEF_QUESTION
    records = [
        {"id": "a", "response": "Want more?"},
        {"id": "b", "response": "It is nine."},
        {"id": "c", "response": "Long. Very long.", "constitution": demo_positive.flipped().to_dict()},
    ]
    result = score_responses(cset, records)
    assert result["n"] == 3 and result["adherence"] == pytest.approx(2 / 3)
    assert result["by_principle"]["question"]["adherence"] == pytest.approx(2 / 3)  # c: no question, as asked
    assert result["adherence_ci95"] == pytest.approx(wilson_interval(2, 3))
