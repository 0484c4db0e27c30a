"""IFEval's 25 instructions at their boundaries, strict vs loose, and the four accuracies on known records.

Cases follow IFEval's semantics (google-research `instruction_following_eval/instructions.py` and its
`instructions_test.py`): exactly N against both relations, the loose variants' transforms, IFEval's quirks
(a `**bold**` span counts as a highlight twice; undetectable language passes)."""

from __future__ import annotations

import json

import pytest

from sami.errors import SamiInputError
from sami.ifeval import REGISTRY, accuracies, follows, load_inputs, loose_variants, parse_kwargs, score
from sami.ifeval.evaluation import IFEvalInput
from sami.ifeval.text import count_sentences, count_sentences_regex, word_tokenize

COVERED: set[str] = set()


def ok(cid: str, text: str, **kwargs) -> bool:
    COVERED.add(cid)
    return follows(cid, parse_kwargs(cid, kwargs, "test"), text)


def both_relations(cid: str, text: str, exact: int, count_kw: str, relation_kw: str, **extra) -> None:
    """At exactly N: "less than" N fails and "at least" N holds; at N+1 the reverse of... "less than" holds."""
    assert not ok(cid, text, **{count_kw: exact, relation_kw: "less than"}, **extra)
    assert ok(cid, text, **{count_kw: exact, relation_kw: "at least"}, **extra)
    assert ok(cid, text, **{count_kw: exact + 1, relation_kw: "less than"}, **extra)
    assert not ok(cid, text, **{count_kw: exact + 1, relation_kw: "at least"}, **extra)


# ---- keywords ----------------------------------------------------------------------------------------
def test_keywords():
    assert ok("keywords:existence", "A Dog and a CAT.", keywords=["dog", "cat"])
    assert not ok("keywords:existence", "A dog only.", keywords=["dog", "cat"])
    both_relations("keywords:frequency", "Bob, bob and BOB.", 3, "frequency", "relation", keyword="bob")
    assert ok("keywords:forbidden_words", "Dogma is fine.", forbidden_words=["dog"])  # whole words only
    assert not ok("keywords:forbidden_words", "The DOG barked.", forbidden_words=["dog", "cat"])
    both_relations("keywords:letter_frequency", "Zebra zoo Z", 3, "let_frequency", "let_relation", letter="z")
    both_relations("keywords:letter_frequency", "#a #b", 2, "let_frequency", "let_relation", letter="#")


# ---- language, length --------------------------------------------------------------------------------
def test_language_and_case():
    english = "This is an English sentence about the weather in the city today."
    assert ok("language:response_language", english, language="en")
    assert not ok("language:response_language", english, language="fr")
    assert ok("language:response_language", "Ceci est une phrase française sur le temps qu'il fait.", language="fr")
    assert ok("language:response_language", "12345 !!!", language="de")  # no letters: langdetect cannot tell
    assert ok("change_case:english_capital", english.upper())
    assert not ok("change_case:english_capital", english)
    assert not ok("change_case:english_capital", "DAS IST EIN DEUTSCHER SATZ ÜBER DAS WETTER IN DER STADT HEUTE.")
    assert ok("change_case:english_lowercase", english.lower())
    assert not ok("change_case:english_lowercase", english)
    assert not ok(
        "change_case:english_lowercase", "ceci est une phrase française sur le temps qu'il fait aujourd'hui."
    )
    # capital words are nltk.word_tokenize tokens: "DON'T" is two (DO, N'T), "U.S." one
    assert word_tokenize("I DON'T KNOW.") == ["I", "DO", "N'T", "KNOW", "."]
    both_relations("change_case:capital_word_frequency", "I DON'T KNOW.", 4, "capital_frequency", "capital_relation")


def test_sentences_punkt_and_boundaries():
    three = "It rains. Take a coat! Is it cold?"
    assert count_sentences(three) == 3 == count_sentences_regex(three)
    assert count_sentences("Dr. Smith paid $3.50 today. He left.") == 2  # abbreviation and decimal are not ends
    both_relations("length_constraints:number_sentences", three, 3, "num_sentences", "relation")
    # IFEval's instructions_test.py: 4 sentences
    assert not ok(
        "length_constraints:number_sentences", "xx,x. xx,x! xx/x. x{x}x?", num_sentences=4, relation="less than"
    )


def test_words_paragraphs():
    both_relations("length_constraints:number_words", "one two, three-four", 4, "num_words", "relation")
    cid = "length_constraints:number_paragraphs"
    assert ok(cid, "a\n***\nb\n***\nc", num_paragraphs=3)
    assert not ok(cid, "a\n***\nb\n***\nc", num_paragraphs=2)
    assert ok(cid, "***\na\n***\nb\n***", num_paragraphs=2)  # empty ends are not paragraphs
    assert not ok(cid, "a\n***\n\n***\nb", num_paragraphs=2)  # an empty middle paragraph fails
    cid = "length_constraints:nth_paragraph_first_word"
    text = 'Intro here.\n\n"Summer, said she.\n\nEnd.'
    assert ok(cid, text, num_paragraphs=3, nth_paragraph=2, first_word="summer")  # quotes and punctuation cut
    assert not ok(cid, text, num_paragraphs=2, nth_paragraph=2, first_word="summer")  # count must be exact
    assert not ok(cid, text, num_paragraphs=3, nth_paragraph=3, first_word="summer")
    assert not ok(cid, "One.\n\nTwo.", num_paragraphs=3, nth_paragraph=3, first_word="two")


# ---- content, format ---------------------------------------------------------------------------------
def test_content_and_format():
    assert ok("detectable_content:number_placeholders", "[name] at [address]", num_placeholders=2)
    assert not ok("detectable_content:number_placeholders", "[name] at [address]", num_placeholders=3)
    assert ok("detectable_content:postscript", "Hi.\np. s. bye", postscript_marker="P.S.")
    assert not ok("detectable_content:postscript", "Hi. PS bye", postscript_marker="P.S.")
    assert ok("detectable_content:postscript", "Hi.\nP.P.S more", postscript_marker="P.P.S")
    bullets = "* one\n* two\n- three\n**bold** is not a bullet"
    assert ok("detectable_format:number_bullet_lists", bullets, num_bullets=3)
    assert not ok("detectable_format:number_bullet_lists", bullets, num_bullets=2)
    assert ok("detectable_format:constrained_response", "Well. My answer is maybe.")
    assert not ok("detectable_format:constrained_response", "My answer is perhaps.")
    cid = "detectable_format:number_highlighted_sections"
    assert ok(cid, "*one* and *two*", num_highlights=2) and not ok(cid, "*one* and * *", num_highlights=2)
    assert ok(cid, "**bold** and *it*", num_highlights=2)  # a **bold** span counts once (as a double highlight)
    assert not ok(cid, "**bold**", num_highlights=2)
    cid = "detectable_format:multiple_sections"
    text = "SECTION 1\nfoo\nSECTION 2\nbar"
    assert ok(cid, text, section_spliter="SECTION", num_sections=2)
    assert not ok(cid, text, section_spliter="SECTION", num_sections=3)
    assert not ok(cid, text, section_spliter="Section", num_sections=1)  # case matters
    assert ok("detectable_format:json_format", '```json\n{"a": 1}\n```')
    assert not ok("detectable_format:json_format", 'Here: {"a": 1}')
    assert ok("detectable_format:title", "<<My Title>>\ntext")
    assert not ok("detectable_format:title", "<< >> and <<broken\ntitle>>")


# ---- combination, start/end, punctuation ---------------------------------------------------------------
def test_combination_startend_punctuation():
    assert ok("combination:two_responses", "first\n******\nsecond")
    assert not ok("combination:two_responses", "same\n******\nsame")
    assert not ok("combination:two_responses", "a\n******\n\n******\nb")
    assert ok("combination:repeat_prompt", "  write a POEM. Roses...", prompt_to_repeat="Write a poem.")
    assert not ok("combination:repeat_prompt", "Sure! Write a poem.", prompt_to_repeat="Write a poem.")
    assert ok("startend:end_checker", '"... Any other questions?"', end_phrase="Any other questions?")
    assert not ok("startend:end_checker", "Any other questions? Bye.", end_phrase="Any other questions?")
    assert ok("startend:quotation", ' "quoted" ') and not ok("startend:quotation", '"')
    assert ok("punctuation:no_comma", "no commas here") and not ok("punctuation:no_comma", "a, b")


def test_every_ifeval_id_is_registered_and_tested():
    ids = {cid for inp in load_inputs() for cid in inp.instruction_id_list}
    assert len(ids) == 25 and set(REGISTRY) == ids
    for case in (test_keywords, test_language_and_case, test_sentences_punkt_and_boundaries, test_words_paragraphs,
                 test_content_and_format, test_combination_startend_punctuation):  # fmt: skip
        case()
    assert COVERED == ids  # every id was exercised by the cases above


# ---- loose vs strict, accuracies ---------------------------------------------------------------------
def test_loose_transforms_change_the_verdict():
    response = "Sure, here it is:\n*hello world*\nHope this helps."
    variants = loose_variants(response)
    assert len(variants) == 8 and variants[0] == response and "*hello world*" in variants[4]
    inp = IFEvalInput("k", "p", ("punctuation:no_comma", "startend:quotation"), ({}, {}))
    strict, loose = score(inp, response, "strict"), score(inp, response, "loose")
    assert strict["follow_instruction_list"] == [False, False]
    assert loose["follow_instruction_list"] == [True, False]  # dropping the first line removes the comma
    quoted = IFEvalInput("q", "p", ("startend:quotation",), ({},))
    assert score(quoted, 'Here:\n"x"', "loose")["follow_all_instructions"]
    assert not score(quoted, '*"x"*', "strict")["follow_all_instructions"]
    assert score(quoted, '*"x"*', "loose")["follow_all_instructions"]  # the variant without `*`
    comma = IFEvalInput("c", "p", ("punctuation:no_comma",), ({},))
    assert not score(comma, "   ", "loose")["follow_all_instructions"]  # a blank response never follows


def test_accuracies_on_known_records():
    strict = [
        {
            "instruction_id_list": ["a", "b"],
            "follow_all_instructions": False,
            "follow_instruction_list": [True, False],
        },
        {"instruction_id_list": ["a"], "follow_all_instructions": True, "follow_instruction_list": [True]},
    ]
    loose = [
        dict(r, follow_all_instructions=True, follow_instruction_list=[True] * len(r["follow_instruction_list"]))
        for r in strict
    ]
    acc = accuracies(strict, loose)
    assert acc["prompt_level_strict_acc"] == 0.5 and acc["inst_level_strict_acc"] == pytest.approx(2 / 3)
    assert acc["prompt_level_loose_acc"] == 1.0 and acc["inst_level_loose_acc"] == 1.0
    assert acc["prompt_level_strict_acc_stderr"] == pytest.approx(0.5)  # sqrt(.25 / 1)
    assert acc["per_instruction"]["b"] == {"n": 1, "strict_acc": 0.0, "loose_acc": 1.0}
    assert acc["average_strict"] == pytest.approx((0.5 + 2 / 3) / 2)


def test_bundled_inputs_and_bad_input(tmp_path):
    inputs = load_inputs()
    assert len(inputs) == 541 and sum(len(i.instruction_id_list) for i in inputs) == 834
    bad = tmp_path / "in.jsonl"
    kwargs = [{"keyword": "x", "frequency": 2, "relation": "more than"}]
    bad.write_text(
        json.dumps({"key": 1, "prompt": "p", "instruction_id_list": ["keywords:frequency"], "kwargs": kwargs})
    )
    with pytest.raises(SamiInputError, match=r"in.jsonl:1: instruction 0: keywords:frequency: relation"):
        load_inputs(bad)
