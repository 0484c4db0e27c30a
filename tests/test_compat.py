"""Training settings renamed between supported transformers versions are translated to the installed version's
name, or refused in one line naming both spellings (`sami.compat`)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from conftest import ROOT
from test_pipeline import tiny_config, write_config

from sami.cli import main
from sami.compat import translate_trainer_args
from sami.errors import SamiInputError
from sami.run_config import parse_config
from sami.sami_config import SAMIConfig

OLD_ONLY = {"gradient_checkpointing", "gradient_checkpointing_kwargs", "learning_rate"}  # transformers 5.20
BOTH = OLD_ONLY | {"activation_checkpointing", "activation_checkpointing_kwargs"}  # 5.2x with the rename


@pytest.mark.parametrize("given", ["gradient_checkpointing", "activation_checkpointing"])
def test_either_spelling_becomes_the_installed_versions_name(given):
    assert translate_trainer_args({given: True}, OLD_ONLY, where="w") == {"gradient_checkpointing": True}
    assert translate_trainer_args({given: True}, BOTH, where="w") == {"activation_checkpointing": True}
    kwargs = {given + "_kwargs": {"use_reentrant": False}, "seed": 1}
    assert translate_trainer_args(kwargs, OLD_ONLY, where="w") == {
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "seed": 1,
    }


def test_both_spellings_with_different_values_are_refused_naming_both():
    same = {"gradient_checkpointing": True, "activation_checkpointing": True}
    assert translate_trainer_args(same, BOTH, where="w") == {"activation_checkpointing": True}
    with pytest.raises(SamiInputError, match="'gradient_checkpointing' \\(True\\) and 'activation_checkpointing'"):
        translate_trainer_args({"gradient_checkpointing": True, "activation_checkpointing": False}, BOTH, where="w")
    with pytest.raises(SamiInputError, match="has neither 'gradient_checkpointing' nor 'activation_checkpointing'"):
        translate_trainer_args({"gradient_checkpointing": True}, {"learning_rate"}, where="w")


def test_a_run_config_takes_the_recipes_spelling_and_refuses_a_contradiction(tmp_path, tiny_model_dir, capsys):
    raw = tiny_config(tiny_model_dir)
    raw["training"]["trainer_args"] = {"gradient_checkpointing": True}
    config = parse_config(yaml.safe_load(yaml.safe_dump(raw)))
    names = {f.name for f in dataclasses.fields(SAMIConfig)}
    expected = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    assert config.training.trainer_args == {expected: True}
    raw["training"]["trainer_args"] = {"gradient_checkpointing": True, "activation_checkpointing": False}
    assert main(["config", "show", str(write_config(tmp_path / "c.yaml", raw))]) == 2
    err = capsys.readouterr().err.strip()
    assert "training.trainer_args" in err and "'gradient_checkpointing'" in err and len(err.splitlines()) == 1


def test_recipes_use_the_spelling_every_supported_version_accepts():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert "activation_checkpointing" not in path.read_text(), path.name  # transformers 5.20 lacks it
