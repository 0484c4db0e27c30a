"""sami.cli_settings: settings objects from YAML plus flags generated from the fields, one error line."""

from __future__ import annotations

import argparse
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field

from sami.cli_settings import add_settings_arguments, load_settings, merge, settings_overrides
from sami.errors import SamiInputError


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["a", "b"] = Field("a", description="which kind")
    both_orders: bool = Field(False, description="both orders")


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(3, ge=1, description="how many, 100% sure")
    rate: float | None = Field(None, description="a rate")
    name: str = Field(..., description="a required name")
    greedy: bool = Field(True, description="greedy decoding")
    tags: list[str] = Field(default_factory=list, description="repeatable tags")
    extra: dict[str, int] = Field(default_factory=dict)
    inner: Inner = Field(default_factory=Inner)


def _parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_settings_arguments(parser, Outer, key="s", **kwargs)
    return parser


def test_flags_follow_the_fields():
    parser = _parser(flags={"inner.kind": ["--kind", "--inner-kind"]})
    args = parser.parse_args(
        ["--size", "5", "--no-greedy", "--tags", "x", "--tags", "y", "--kind", "b", "--inner-both-orders"]
    )
    assert settings_overrides(args, "s") == {
        "size": 5,
        "greedy": False,
        "tags": ["x", "y"],
        "inner": {"kind": "b", "both_orders": True},
    }
    # flags not given leave nothing behind, so a file's values survive
    assert settings_overrides(parser.parse_args([]), "s") == {}
    help_text = parser.format_help()
    assert "how many, 100% sure (default: 3)" in help_text
    assert "--greedy, --no-greedy" in help_text
    assert "--extra" not in help_text  # a mapping cannot be a flag
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["--kind", "c"])  # Literal -> choices


def test_fields_and_exclude_select_flags():
    help_text = _parser(fields=["size", "inner"], exclude=("inner.both_orders",)).format_help()
    assert "--size" in help_text and "--inner-kind" in help_text
    assert "--name" not in help_text and "--inner-both-orders" not in help_text


def test_load_settings_file_then_flags(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: from-file\nsize: 4\ninner: {kind: b}\n", encoding="utf-8")
    s = load_settings(Outer, path, {"size": 9, "inner": {"both_orders": True}})
    assert (s.name, s.size, s.inner.kind, s.inner.both_orders) == ("from-file", 9, "b", True)
    assert load_settings(Outer, None, {"name": "n"}).size == 3


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"name": "n", "size": "many"}, r"^flags: size: expected an integer, got \"many\"$"),
        ({"name": "n", "size": 0}, r"^flags: size: Input should be greater than or equal to 1 \(got 0\)$"),
        ({"size": 2}, r"^flags: name: required field is missing$"),
        ({"name": "n", "colour": 1, "size": "x"}, r"^flags: size: expected an integer, got \"x\" \(and 1 more\)$"),
        ({"name": "n", "inner": {"kind": "z"}}, r"^flags: inner\.kind: Input should be 'a' or 'b' \(got \"z\"\)$"),
    ],
)
def test_one_error_line_names_the_field(raw, message):
    with pytest.raises(SamiInputError, match=message):
        load_settings(Outer, None, raw)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(SamiInputError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_settings(Outer, bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n", encoding="utf-8")
    with pytest.raises(SamiInputError, match="list.yaml: expected a mapping at the top level, got list"):
        load_settings(Outer, listed)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("name: n\nsize: -1\n", encoding="utf-8")
    with pytest.raises(SamiInputError, match=r"wrong\.yaml: size: "):
        load_settings(Outer, wrong)
    with pytest.raises(SamiInputError, match="missing.yaml: file not found"):
        load_settings(Outer, tmp_path / "missing.yaml")


def test_merge_is_deep_and_pure():
    base = {"a": 1, "inner": {"kind": "a", "both_orders": False}}
    assert merge(base, {"inner": {"kind": "b"}}) == {"a": 1, "inner": {"kind": "b", "both_orders": False}}
    assert base["inner"]["kind"] == "a"


def test_sami_evaluate_builds_its_settings_from_file_and_flags(tmp_path):
    from sami.cli import build_parser
    from sami.commands.evaluate import build_settings
    from sami.evaluation.settings import BaselineSettings

    cfg = tmp_path / "eval.yaml"
    cfg.write_text("max_new_tokens: 20\nbaselines: {sft: some/model}\njudge: {max_tokens: 8, seed: 5}\n")
    argv = ["evaluate", "--model", "m", "--out", str(tmp_path / "o"), "--config", str(cfg), "--seed", "3"]
    argv += ["--judge", "api", "--judge-base-url", "http://127.0.0.1:1/v1", "--both-orders", "--no-intrinsic"]
    argv += ["--baseline-style", "sft=chat", "--limit", "4"]
    s = build_settings(build_parser(argv).parse_args(argv))
    assert (s.max_new_tokens, s.limit, s.seed, s.intrinsic) == (20, 4, 3, False)
    assert (s.judge.kind, s.judge.base_url, s.judge.both_orders, s.judge.max_tokens) == (
        "api", "http://127.0.0.1:1/v1", True, 8,
    )  # fmt: skip
    assert s.judge.seed == 5  # the file's judge seed stays; without one the judge follows --seed
    assert s.baselines == {"sft": BaselineSettings(model="some/model", style="chat")}

    plain = ["evaluate", "--model", "m", "--out", "o", "--seed", "3", "--baseline", "a=x", "--baseline", "b=y"]
    s = build_settings(build_parser(plain).parse_args(plain))
    assert s.judge.seed == 3 and list(s.baselines) == ["a", "b"]
    bare = ["evaluate", "--model", "m", "--out", "o"]
    assert build_settings(build_parser(bare).parse_args(bare)).baselines == {"base": BaselineSettings()}
    bad = [*bare, "--judge-tie-band", "0.7"]
    with pytest.raises(SamiInputError, match=r"^command line: judge\.tie_band: "):
        build_settings(build_parser(bad).parse_args(bad))
