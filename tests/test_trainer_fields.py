"""The declared trainer fields (`sami.trainer_fields`): each one reaches the run config's `training` section,
`SAMIConfig`, `sami train`'s flags and, for the methods that take it, the DPO and SFT TRL configs; a knob given twice
is refused in one line by one rule."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Literal, get_args, get_origin

import pytest
from transformers import TrainingArguments

from sami.commands import train as train_command
from sami.errors import SamiInputError
from sami.run_config import TrainingSettings, load_config, parse_config
from sami.sami_config import SAMIConfig
from sami.stage_settings import training_arguments
from sami.trainer_fields import DPO, SFT, TRAINER_FIELDS, TrainerField, section_names

# A valid value other than the default, where the type alone does not give one (a new str field needs one here).
OTHER = {"optim": "sgd", "lr_scheduler_type": "linear", "attn_implementation": "eager", "save_strategy": "epoch"}
BASE = {"data": {"train": [{"bundled": "hh_helpful_train"}], "eval": [{"bundled": "hh_helpful_test"}]}}


def changed(f: TrainerField):
    if f.name in OTHER:
        return OTHER[f.name]
    if get_origin(f.type) is Literal:
        return next(o for o in get_args(f.type) if o != f.default)
    if isinstance(f.default, list):
        return []
    if f.default is None:
        return True if bool in get_args(f.type) else 3
    if isinstance(f.default, bool):
        return not f.default
    return f.default + (1 if isinstance(f.default, int) else 0.5)


def run_config(f: TrainerField, method: str | None = None):
    """The demo config with `training.<f.name>` changed (and, for a TRL method, its section on the CPU)."""
    config = load_config().model_copy(update={"training": TrainingSettings(**{f.name: changed(f)})})
    if method is None:
        return config
    raw = {**BASE, "comparisons": {method: {"trainer_args": {"use_cpu": True}}}}
    return config.model_copy(update={"comparisons": parse_config(raw).comparisons})


@pytest.mark.parametrize("f", TRAINER_FIELDS, ids=lambda f: f.name)
def test_a_declared_field_reaches_the_settings_samiconfig_and_the_flags(f, tmp_path):
    sami_default = SAMIConfig(output_dir=str(tmp_path)).__getattribute__(f.name)
    assert sami_default == f.default
    if f.inherited:  # SAMIConfig keeps TrainingArguments' field: its default must still be the declared one
        assert TrainingArguments.__dataclass_fields__[f.name].default == f.default
    else:
        assert SAMIConfig.__dataclass_fields__[f.name].metadata["help"] == f.help
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    assert {f"--{f.name}", f"--{f.name.replace('_', '-')}"} & set(parser._option_string_actions)
    if not f.section:
        assert f.name not in TrainingSettings.model_fields
        return
    assert TrainingSettings.model_fields[f.name].description
    assert getattr(TrainingSettings(), f.name) == f.default
    args = training_arguments(run_config(f), output_dir=tmp_path, max_steps=1)
    assert getattr(args, f.name) == changed(f)


@pytest.mark.parametrize("method", [DPO, SFT])
@pytest.mark.parametrize("f", TRAINER_FIELDS, ids=lambda f: f.name)
def test_a_declared_field_reaches_the_methods_that_take_it(f, method, tmp_path):
    pytest.importorskip("trl", reason="TRL is the `compare` extra")
    from sami.comparisons import dpo, sft

    flags = {DPO: dpo.DPO_FLAGS, SFT: sft.SFT_FLAGS}[method]
    if method not in f.methods:
        assert f.name not in flags or f.name == "beta"  # --beta is DPO's own β
        return
    assert f.name in flags  # `sami train --method <method> --<name>` is used, not refused
    config_of = {DPO: dpo.dpo_config, SFT: sft.sft_config}[method]
    assert getattr(config_of(tmp_path, use_cpu=True), f.name) == f.default
    if f.section:
        arguments = {DPO: dpo.dpo_arguments, SFT: sft.sft_arguments}[method]
        args = arguments(run_config(f, method), output_dir=tmp_path, max_steps=1)
        assert getattr(args, f.name) == changed(f)


def test_the_training_section_is_the_declared_list_in_order():
    assert list(TrainingSettings.model_fields) == [*section_names(), "trainer_args"]


@pytest.mark.parametrize(
    "method, key, other",
    [
        ("dpo", "save_steps", "training.save_steps"),
        ("dpo", "learning_rate", "comparisons.dpo.learning_rate"),
        ("dpo", "beta", "comparisons.dpo.beta"),
        ("dpo", "max_steps", "comparisons.dpo.max_steps"),
        ("dpo", "seed", "the top-level seed"),
        ("sft", "per_device_train_batch_size", "training.per_device_train_batch_size"),
        ("sft", "output_dir", "the run folder"),
    ],
)
def test_a_knob_given_twice_for_a_method_is_one_line_naming_both(method, key, other):
    pytest.importorskip("trl", reason="TRL is the `compare` extra")
    with pytest.raises(SamiInputError) as e:
        parse_config({**BASE, "comparisons": {method: {"trainer_args": {key: 1}}}})
    message = str(e.value)
    assert f"comparisons.{method}.trainer_args" in message and f"{key!r} is set by {other}" in message
    assert len(message.splitlines()) == 1


def test_a_knob_given_twice_for_sami_names_both():
    with pytest.raises(SamiInputError, match=r"training.trainer_args: 'warmup_steps' is set by training.warmup_steps"):
        parse_config({**BASE, "training": {"trainer_args": {"warmup_steps": 1}}})
    # A TrainingArguments field the list does not declare is merged in as given.
    assert parse_config({**BASE, "training": {"trainer_args": {"adam_beta2": 0.99}}}).training.trainer_args == {
        "adam_beta2": 0.99
    }


@pytest.mark.parametrize("method", [DPO, SFT])
def test_sami_train_method_flags_reach_the_trl_config(method, tmp_path):
    """`sami train --method dpo|sft --warmup-steps 3` (refused before the declared list) reaches the TRL config."""
    pytest.importorskip("trl", reason="TRL is the `compare` extra")
    from sami.comparisons import dpo, sft
    from sami.comparisons.trl_train import train_command as trl_train_command

    caught = {}
    args = argparse.Namespace(
        model="m", config=None, lora=False, tokenizer=None, resume=False, output_dir=str(tmp_path), samples="s"
    )
    setattr(args, f"{method}_prompt", None)
    flags = {DPO: dpo.DPO_FLAGS, SFT: sft.SFT_FLAGS}[method]
    config_of = {DPO: dpo.dpo_config, SFT: sft.sft_config}[method]
    trl_train_command(
        args,
        {"warmup_steps": 3, "weight_decay": 0.25},
        method=method,
        shared=flags,
        unused="unused",
        arguments=None,
        config_of=config_of,
        default_prompt="query",
        train=lambda *a, **k: caught.setdefault("config", a[3]),
    )
    assert (caught["config"].warmup_steps, caught["config"].weight_decay) == (3, 0.25)
    assert dataclasses.is_dataclass(caught["config"])


@pytest.mark.parametrize("method", [DPO, SFT])
def test_a_methods_own_learning_rate_is_used_over_the_training_one(method, tmp_path):
    pytest.importorskip("trl", reason="TRL is the `compare` extra")
    from sami.comparisons import dpo, sft

    arguments = {DPO: dpo.dpo_arguments, SFT: sft.sft_arguments}[method]
    raw = {**BASE, "training": {"learning_rate": 1e-4}}
    for own, expected in ({}, 1e-4), ({"learning_rate": 3e-3}, 3e-3):
        config = parse_config({**raw, "comparisons": {method: {**own, "trainer_args": {"use_cpu": True}}}})
        assert arguments(config, output_dir=tmp_path, max_steps=1).learning_rate == expected


def test_preflight_builds_the_comparisons_configs(tmp_path):
    """A knob TRL's config refuses fails before any work, one line naming the method (not after generation)."""
    pytest.importorskip("trl", reason="TRL is the `compare` extra")
    from sami.preflight import check_training

    raw = {**BASE, "training": {"bf16": True}, "iterations": {"count": 1, "steps": [1]}}
    check_training(parse_config({**raw, "comparisons": {"dpo": {}, "sft": {}}}))  # CPU bf16 as SAMI's: use_cpu
    for method in (DPO, SFT):
        config = parse_config({**raw, "comparisons": {method: {"trainer_args": {"fp16": True}}}})
        with pytest.raises(SamiInputError) as e:
            check_training(config)
        assert str(e.value) == f"comparisons.{method}: At most one of fp16 and bf16 can be True, but not both"
