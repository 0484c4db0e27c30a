"""Constitution files and the sampling schemes that choose which constitutions a query contrasts."""

from __future__ import annotations

import json
import random

import pytest

from sami.constitutions import (
    BUNDLED_CONSTITUTIONS,
    SCHEMES,
    Constitution,
    ConstitutionSet,
    Principle,
    load_constitutions,
    max_constitutions,
    sample_constitutions,
)
from sami.data import Query
from sami.errors import SamiInputError

FILES = ["hh_opus", "tldr_mistral", "tldr_opus", "tldr_diverse_opus"]


def helpful_query(i: int = 0) -> Query:
    return Query(f"h{i}", "How do I bake bread?", {"subset": "helpful"})


def harmless_query(i: int = 0) -> Query:
    return Query(f"x{i}", "How do I pick a lock?", {"subset": "harmless"})


# ---- files -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FILES)
def test_shared_files_load_and_match_the_bundled_copies(shared_data, name):
    path = shared_data / "constitutions" / f"{name}.json"
    cset = ConstitutionSet.load(path)
    assert cset.task in ("dialogue", "summarization")
    assert cset.to_dict() == json.loads(path.read_text())
    assert load_constitutions(name) == cset  # the bundled name gives the same set


def test_diverse_set_has_15_train_and_5_heldout_principles():
    cset = load_constitutions("tldr_diverse_opus")
    assert len(cset.principles) == 20
    assert cset.train_principles == cset.names[:15]
    assert cset.heldout_principles == cset.names[15:]
    assert [p.name for p in cset.pool("train")] == cset.names[:15]
    assert [p.name for p in cset.pool("heldout")] == cset.names[15:]
    assert len(cset.pool("eval")) == 20


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_save_and_load_round_trip(tmp_path, suffix):
    cset = load_constitutions("tldr_diverse_opus")
    path = cset.save(tmp_path / f"c{suffix}")
    again = ConstitutionSet.load(path)
    assert again == cset
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_bundled_names_are_all_loadable():
    for name in BUNDLED_CONSTITUTIONS:
        assert load_constitutions(name).principles


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"task": "dialogue", "principles": []}, "at least one principle"),
        ({"principles": [{"name": "a", "principle": "x", "antithesis": "y"}]}, "task: missing"),
        ({"task": "dialogue", "principles": [{"name": "a", "principle": "x"}]}, "missing field(s) ['antithesis']"),
        ({"task": "d", "principles": [{"name": "a", "principle": "x", "antithesis": "x"}]}, "antithesis equals"),
        ({"task": "d", "principles": [{"name": "a", "principle": "x", "antithesis": ""}]}, "principles[0].antithesis"),
        (
            {"task": "d", "principles": [{"name": "a", "principle": "x", "antithesis": "y"}] * 2},
            "duplicate name 'a'",
        ),
        (
            {
                "task": "d",
                "principles": [{"name": "a", "principle": "x", "antithesis": "y"}],
                "heldout_principles": ["b"],
            },
            "heldout_principles: unknown principle(s) ['b']",
        ),
        ({"task": "d", "principles": [], "colour": "red"}, "unknown field(s) ['colour']"),
    ],
)
def test_bad_files_are_rejected_naming_the_field(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SamiInputError) as e:
        ConstitutionSet.load(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_invalid_json_names_the_line_and_missing_refs_fail(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "task": "dialogue",\n  "principles": [\n}\n')
    with pytest.raises(SamiInputError, match=r"bad\.json:4: invalid JSON"):
        ConstitutionSet.load(path)
    with pytest.raises(SamiInputError, match="bundled name"):
        load_constitutions("no_such_set")
    (tmp_path / "c.txt").write_text("{}")
    with pytest.raises(SamiInputError, match=r"\.json, \.yaml or \.yml"):
        ConstitutionSet.load(tmp_path / "c.txt")


# ---- constitutions ------------------------------------------------------------------------------------------


def test_render_label_signs_and_dict_round_trip():
    a = Principle("helpful", "Be helpful.", "Be vague.")
    b = Principle("harmless", "Be safe.", "Be reckless.")
    c = Constitution(((a, False), (b, True)))
    assert c.render() == "1. Be vague.\n2. Be safe."
    assert c.label() == "+harmless -helpful"
    assert c.signs() == {"helpful": False, "harmless": True}
    assert not c.is_positive() and Constitution(((a, True), (b, True))).is_positive()
    d = c.to_dict()
    assert d["label"] == "+harmless -helpful"
    assert Constitution.from_dict(json.loads(json.dumps(d))) == c
    shuffled = {c.shuffled(random.Random(s)).render() for s in range(20)}
    assert shuffled == {"1. Be vague.\n2. Be safe.", "1. Be safe.\n2. Be vague."}
    with pytest.raises(SamiInputError):
        Constitution.from_dict({"principles": [{"name": "x"}]})


# ---- schemes ------------------------------------------------------------------------------------------------


def test_every_scheme_is_documented():
    assert set(SCHEMES) == {"uniform", "paper-dialogue", "paper-summarization", "opposite", "diverse"}


def test_opposite_pairs_all_positive_with_all_antithesis():
    cset = load_constitutions("demo_checks")
    pos, neg = sample_constitutions(cset, "opposite", 2, random.Random(0))
    assert pos.is_positive() and set(neg.signs().values()) == {False}
    assert neg.label() == pos.flipped().label() and max_constitutions(cset, "opposite") == 2


def test_uniform_yields_distinct_patterns_positive_first():
    cset = load_constitutions("tldr_opus")
    rng = random.Random(0)
    for _ in range(50):
        cs = sample_constitutions(cset, "uniform", 3, rng)
        assert cs[0].is_positive()
        assert len({c.label() for c in cs}) == 3
    every = sample_constitutions(cset, "uniform", 4, rng)
    assert {c.label() for c in every} == {
        "+comprehensive +concise",
        "+comprehensive -concise",
        "-comprehensive +concise",
        "-comprehensive -concise",
    }
    with pytest.raises(SamiInputError, match="at most 4 distinct constitutions"):
        sample_constitutions(cset, "uniform", 5, rng)


def test_uniform_uses_train_principles_in_train_mode_and_all_in_eval_mode():
    cset = load_constitutions("tldr_diverse_opus")
    train = sample_constitutions(cset, "uniform", 2, random.Random(0))
    assert all(set(c.signs()) == set(cset.train_principles) for c in train)
    full = sample_constitutions(cset, "uniform", 2, random.Random(0), mode="eval")
    assert all(set(c.signs()) == set(cset.names) for c in full)
    assert max_constitutions(cset, "uniform", "train") == 2**15


def test_paper_dialogue_pairs():
    cset = load_constitutions("hh_opus")
    rng = random.Random(1)
    helpful_negatives, harmless_negatives = set(), set()
    for i in range(200):
        pos, neg = sample_constitutions(cset, "paper-dialogue", 2, rng, query=helpful_query(i))
        assert pos.is_positive()  # always (all-positive, a negative): never two negatives
        assert neg.signs()["helpful"] is False
        helpful_negatives.add(neg.label())
        pos, neg = sample_constitutions(cset, "paper-dialogue", 2, rng, query=harmless_query(i))
        assert pos.is_positive()
        assert neg.signs()["harmless"] is False
        harmless_negatives.add(neg.label())
    assert helpful_negatives == {"+harmless -helpful", "-harmless -helpful"}
    assert harmless_negatives == {"-harmless +helpful", "-harmless -helpful"}


def test_paper_dialogue_needs_the_subset_and_at_most_two():
    cset = load_constitutions("hh_opus")
    with pytest.raises(SamiInputError, match="query q7: .*meta\\['subset'\\]"):
        sample_constitutions(cset, "paper-dialogue", 2, random.Random(0), query=Query("q7", "hi", {}))
    with pytest.raises(SamiInputError, match="needs the query"):
        sample_constitutions(cset, "paper-dialogue", 2, random.Random(0))
    with pytest.raises(SamiInputError, match="at most 2"):
        sample_constitutions(cset, "paper-dialogue", 3, random.Random(0), query=helpful_query())
    with pytest.raises(SamiInputError, match="no principle named 'helpful'"):
        tldr = load_constitutions("tldr_opus")
        sample_constitutions(tldr, "paper-dialogue", 2, random.Random(0), query=helpful_query())


def test_paper_summarization_pairs_and_orders():
    cset = load_constitutions("tldr_mistral")
    rng = random.Random(2)
    negatives, orders = set(), set()
    for _ in range(200):
        pos, neg = sample_constitutions(cset, "paper-summarization", 2, rng)
        assert pos.is_positive() and not neg.is_positive()
        negatives.add(neg.label())
        orders.add(tuple(p.name for p, _ in pos.items))
    assert negatives == {"+comprehensive -concise", "-comprehensive +concise", "-comprehensive -concise"}
    assert orders == {("concise", "comprehensive"), ("comprehensive", "concise")}
    with pytest.raises(SamiInputError, match="at most 2"):
        sample_constitutions(cset, "paper-summarization", 3, rng)


def test_diverse_draws_two_principles_and_contrasts_the_complement():
    cset = load_constitutions("tldr_diverse_opus")
    heldout = set(cset.heldout_principles)
    rng = random.Random(3)
    drawn: set[str] = set()
    for _ in range(300):
        first, second = sample_constitutions(cset, "diverse", 2, rng)
        assert set(first.signs()) == set(second.signs()) and len(first.signs()) == 2
        assert all(second.signs()[k] is (not v) for k, v in first.signs().items())
        assert not heldout & set(first.signs())  # train mode never draws a held-out principle
        drawn |= set(first.signs())
    assert drawn == set(cset.train_principles)
    for _ in range(50):
        first, _ = sample_constitutions(cset, "diverse", 2, rng, mode="heldout")
        assert set(first.signs()) <= heldout
    evaluated = set()
    for _ in range(300):
        evaluated |= set(sample_constitutions(cset, "diverse", 2, rng, mode="eval")[0].signs())
    assert evaluated & heldout and evaluated - heldout
    with pytest.raises(SamiInputError, match="at most 2"):
        sample_constitutions(cset, "diverse", 3, rng)
    with pytest.raises(SamiInputError, match="heldout_principles"):
        sample_constitutions(load_constitutions("tldr_opus"), "diverse", 2, rng, mode="heldout")


@pytest.mark.parametrize("scheme", ["uniform", "paper-dialogue", "paper-summarization", "diverse"])
def test_schemes_are_reproducible_from_the_seed(scheme):
    cset = load_constitutions("hh_opus" if scheme == "paper-dialogue" else "tldr_diverse_opus")

    def draw(seed):
        rng = random.Random(seed)
        return [
            [c.render() for c in sample_constitutions(cset, scheme, 2, rng, query=helpful_query(i))] for i in range(30)
        ]

    assert draw(5) == draw(5)
    assert draw(5) != draw(6)


def test_bad_scheme_mode_and_n():
    cset = load_constitutions("tldr_opus")
    with pytest.raises(SamiInputError, match="scheme: expected one of"):
        sample_constitutions(cset, "random", 2, random.Random(0))
    with pytest.raises(SamiInputError, match="mode: expected one of"):
        sample_constitutions(cset, "uniform", 2, random.Random(0), mode="test")
    with pytest.raises(SamiInputError, match="positive integer"):
        sample_constitutions(cset, "uniform", 0, random.Random(0))
    # n=1 gives just the positive constitution (what evaluation needs)
    (only,) = sample_constitutions(cset, "paper-summarization", 1, random.Random(0))
    assert only.is_positive()


def test_the_documented_example_file_loads(tmp_path):
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = doc.split("## Write your own constitution", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "my_principles.yaml"
    path.write_text(example)
    cset = load_constitutions(str(path))
    assert cset.names == ["polite", "precise"] and cset.task == "dialogue"
    assert len(example.strip().splitlines()) <= 10
