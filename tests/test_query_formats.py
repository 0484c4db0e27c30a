"""Query transforms on records written in the hub's own schemas (JSON Lines, parquet, save_to_disk folders)."""

from __future__ import annotations

import gzip
import json
import shutil

import datasets
import pytest
import yaml
from conftest import ROOT

from sami.cli import main
from sami.data import Query, QuerySource, load_queries
from sami.errors import SamiInputError
from sami.prompts import get_template, render_prompt
from sami.run_config import load_config

# Anthropic/hh-rlhf (helpful-base/train.jsonl.gz): {"chosen", "rejected"}, whole transcripts.
HH = [
    {
        "chosen": "\n\nHuman: What are some cuss words in english?\n\nAssistant: I'd rather not list them."
        "\n\nHuman: What's your favorite one?\n\nAssistant: I don't have one.",
        "rejected": "\n\nHuman: What are some cuss words in english?\n\nAssistant: I'd rather not list them."
        "\n\nHuman: What's your favorite one?\n\nAssistant: Ass.",
    },
    {
        "chosen": "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water, yeast and salt.",
        "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: Buy it.",
    },
]


def tldr_row(pid: str, post: str | None, article: str | None = None, choice: int = 0) -> dict:
    """A row of openai/summarize_from_feedback (`comparisons`), as its parquet conversion holds it."""
    return {
        "info": {
            "id": pid,
            "post": post,
            "title": "a title",
            "subreddit": "relationships" if post else None,
            "site": None if post else "dailymail",
            "article": article,
        },
        "summaries": [
            {"text": " summary one", "policy": "sup2", "note": None},
            {"text": " summary two", "policy": "ref", "note": None},
        ],
        "choice": choice,
        "worker": "w1",
        "batch": "batch3",
        "split": "valid1",
        "extra": {"confidence": None},
    }


def write_jsonl(path, records, *, compress: bool = False):
    text = "".join(json.dumps(r) + "\n" for r in records)
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("layout", ["jsonl.gz", "parquet"])
def test_hh_first_turn_and_context(tmp_path, layout):
    if layout == "parquet":
        path = tmp_path / "train-00000-of-00001.parquet"
        datasets.Dataset.from_list(HH).to_parquet(str(path))
    else:
        path = write_jsonl(tmp_path / "train.jsonl.gz", HH, compress=True)
    first = load_queries(QuerySource(path=str(path), transform="hh_first_turn", subset="helpful"))
    assert [q.query for q in first] == ["What are some cuss words in english?", "How do I bake bread?"]
    stem = "train-00000-of-00001" if layout == "parquet" else "train"
    assert [q.id for q in first] == [f"{stem}-0", f"{stem}-1"]
    assert all(q.meta["subset"] == "helpful" for q in first)
    context = load_queries(QuerySource(path=str(path), transform="hh_context"))
    assert context[0].query == (
        "What are some cuss words in english?\n\nAssistant: I'd rather not list them."
        "\n\nHuman: What's your favorite one?"
    )
    assert context[1].query == "How do I bake bread?"
    # In the base-style dialogue template the context is the HH transcript itself, up to the open reply.
    prompt = get_template("dialogue", "base").training_prompt("1. Be helpful.", context[0])
    assert prompt.endswith(HH[0]["chosen"][2 : HH[0]["chosen"].rindex("\n\nAssistant:")] + "\n\nAssistant:")


def test_hh_first_turn_matches_the_shared_queries(tmp_path, shared_data):
    """Transcripts built around the real first turns (the shared files' source) give those queries back."""
    real = load_queries(QuerySource(path=str(shared_data / "hh_rlhf/helpful_test.jsonl"), limit=20))
    rows = [{"chosen": f"\n\nHuman: {q.query}\n\nAssistant: Sure.", "rejected": "x"} for q in real]
    path = write_jsonl(tmp_path / "test.jsonl", rows)
    got = load_queries(QuerySource(path=str(path), transform="hh_first_turn"))
    assert [q.query for q in got] == [q.query.strip() for q in real]


def test_tldr_posts_from_the_summarize_from_feedback_layout(tmp_path):
    rows = [
        tldr_row("t3_a", "My dog ate my homework."),
        tldr_row("t3_a", "My dog ate my homework.", choice=1),  # the same post, another comparison
        tldr_row("dm-1", None, article="An article from the Daily Mail."),  # a CNN/DM row: no post
        tldr_row("t3_b", "  I moved to a new city.  "),
    ]
    folder = tmp_path / "sff"
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder))
    queries = load_queries(QuerySource(path=str(folder), split="validation", transform="tldr"))
    assert [(q.id, q.query) for q in queries] == [
        ("t3_a", "My dog ate my homework."),
        ("t3_b", "I moved to a new city."),
    ]
    parquet = tmp_path / "validation.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    assert load_queries(QuerySource(path=str(parquet), transform="tldr", limit=1))[0].id == "t3_a"


def test_trl_standard_and_conversational_prompts(tmp_path):
    standard = write_jsonl(tmp_path / "standard.jsonl", [{"prompt": "The sky is"}, {"prompt": "Why is grass green?"}])
    assert [q.query for q in load_queries(QuerySource(path=str(standard), transform="trl"))] == [
        "The sky is",
        "Why is grass green?",
    ]
    conversational = [
        {"prompt": [{"role": "user", "content": "What color is the sky?"}], "chosen": [], "rejected": []},
        {
            "prompt": [
                {"role": "system", "content": "You are a pirate."},
                {"role": "user", "content": "Where is the treasure?"},
            ]
        },
    ]
    folder = tmp_path / "conv"
    datasets.Dataset.from_list(conversational).save_to_disk(str(folder))
    got = load_queries(QuerySource(path=str(folder), transform="trl"))
    assert [q.query for q in got] == ["What color is the sky?", "Where is the treasure?"]
    assert "system" not in got[0].meta and got[1].meta["system"] == "You are a pirate."
    messages = [
        {
            "messages": [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Bonjour"},
            ],
            "id": "m1",
        }
    ]
    got = load_queries(QuerySource(path=str(write_jsonl(tmp_path / "m.jsonl", messages)), transform="trl"))
    assert got == [Query("m1", "Hello", {"source": "m", "system": "Answer in French."})]


def test_query_system_text_reaches_chat_prompts(default_tokenizer):
    constitution = "1. Answer in one short sentence."
    query = Query("q", "Where is the treasure?", {"system": "You are a pirate."})
    chat = get_template("dialogue", "chat")
    messages = chat.training_prompt(constitution, query)
    assert messages[0]["role"] == "system" and messages[0]["content"].endswith("\n\nYou are a pirate.")
    assert messages[0]["content"].startswith("Reply to the user.")
    assert messages[1] == {"role": "user", "content": "Where is the treasure?"}
    assert "You are a pirate." in render_prompt(chat.generation_prompt(constitution, query), default_tokenizer)
    # Base-style templates have no system slot: the same prompt as for the bare text.
    base = get_template("dialogue", "base")
    assert base.training_prompt(constitution, query) == base.training_prompt(constitution, query.query)


@pytest.mark.parametrize(
    ("transform", "record", "message"),
    [
        ("hh_first_turn", {"chosen": "\n\nAssistant: Hi there.", "rejected": "x"}, "has no 'Human:' turn"),
        ("hh_context", {"chosen": "just text", "rejected": "x"}, "has no 'Human:' turn"),
        ("hh_first_turn", {"prompt": "x"}, "no field 'chosen'"),
        ("tldr", tldr_row("t3_z", ""), "info.post must be a non-empty string"),
        ("trl", {"prompt": []}, "'prompt' is an empty list of messages"),
        ("trl", {"prompt": "  "}, "'prompt' is empty"),
        ("trl", {"text": "a"}, "no field 'prompt' or 'messages'"),
        (
            "trl",
            {
                "prompt": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            },
            "multi-turn conversation",
        ),
        ("trl", {"messages": [{"role": "system", "content": "s"}]}, "has no user turn"),
    ],
)
def test_malformed_records_name_the_record(tmp_path, transform, record, message):
    path = write_jsonl(tmp_path / "q.jsonl", [HH[1] if transform.startswith("hh") else {"prompt": "ok"}, record])
    if transform == "tldr":
        path = write_jsonl(tmp_path / "q.jsonl", [tldr_row("t3_ok", "fine"), record])
    with pytest.raises(SamiInputError) as err:
        load_queries(QuerySource(path=str(path), transform=transform))
    text = str(err.value)
    assert text.startswith(f"{path}:2: transform {transform}: ") and message in text
    assert "\n" not in text


def test_malformed_record_exits_2_with_one_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": []}])
    code = main(["generate", "--queries", str(path), "--transform", "trl", "--constitutions", "demo_checks"]
                + ["--out", str(tmp_path / "s.jsonl")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"sami generate: error: {path}:1: transform trl: 'prompt' is an empty list of messages"


def test_hh_context_is_refused_with_chat_prompts(tmp_path):
    raw = yaml.safe_load((ROOT / "configs/hh_tiny.yaml").read_text())
    raw["data"]["train"] = [{"dataset": "Anthropic/hh-rlhf", "data_dir": "helpful-base", "transform": "hh_context"}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SamiInputError, match=r"data.train.0.transform: hh_context .* use hh_first_turn"):
        load_config(path)


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_resolve_in_a_clone_without_shared_data(tmp_path, monkeypatch, capsys, recipe):
    """`sami config show` on a copy of the configs folder, outside the checkout, with no ../shared beside it."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "configs", clone / "configs")
    monkeypatch.chdir(clone)
    assert not (clone.parent / "shared").exists()
    assert "../shared" not in recipe.read_text()
    assert main(["config", "show", f"configs/{recipe.name}"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    sources = shown["data"]["train"] + shown["data"]["eval"]
    assert all(s["path"] is None for s in sources)  # hub datasets or bundled copies only
    if recipe.name == "hh_mistral7b.yaml":
        assert [(s["dataset"], s["data_dir"], s["transform"], s["subset"]) for s in shown["data"]["train"]] == [
            ("Anthropic/hh-rlhf", "helpful-base", "hh_first_turn", "helpful"),
            ("Anthropic/hh-rlhf", "harmless-base", "hh_first_turn", "harmless"),
        ]
