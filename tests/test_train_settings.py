"""One source of training settings: `sami train`'s flags are SAMIConfig's fields, and `sami train` and `sami run`
resolve the same defaults (the paper's where it has one)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import warnings

import pytest
import torch

from sami.commands import train as train_command
from sami.run_config import TrainingSettings, default_config_path, load_config
from sami.sami_config import SAMIConfig
from sami.stage_settings import training_arguments
from sami.trainer import train_sami

# Set per training stage by `sami run` (the run folder, the iteration's steps, the run's seed and C), not defaults.
PER_STAGE = {"output_dir", "logging_dir", "max_steps", "seed", "n_constitutions"}


def parse_train(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_sami_train_and_sami_run_resolve_the_same_defaults(tmp_path):
    from_train = train_command.training_config(parse_train("--samples", "s.jsonl", "--output-dir", str(tmp_path)))
    run_config = load_config().model_copy(update={"training": TrainingSettings()})
    from_run = training_arguments(run_config, output_dir=tmp_path, max_steps=-1)
    differ = {
        f.name: (getattr(from_train, f.name), getattr(from_run, f.name))
        for f in dataclasses.fields(SAMIConfig)
        if f.name not in PER_STAGE and getattr(from_train, f.name) != getattr(from_run, f.name)
    }
    assert differ == {}
    # Every field of the run config's training section is the SAMIConfig field of that name, with its default.
    settings = TrainingSettings().model_dump(exclude={"trainer_args"})
    assert {name: getattr(from_train, name) for name in settings} == settings
    # The paper's values (Table 1), where TrainingArguments says 5e-5 and 8.
    assert (from_train.learning_rate, from_train.per_device_train_batch_size) == (5e-7, 128)
    assert from_train.optim == "adamw_torch" and from_train.lr_scheduler_type == "constant"


def test_flags_override_the_run_config_and_only_the_flags_given(tmp_path):
    demo = load_config().training
    args = ["--samples", "s.jsonl", "--output-dir", str(tmp_path), "--config", str(default_config_path())]
    config = train_command.training_config(parse_train(*args))
    assert (config.learning_rate, config.per_device_train_batch_size) == (demo.learning_rate, 4)
    assert config.learning_rate == 3e-5  # the demo's own value, not SAMIConfig's default
    config = train_command.training_config(parse_train(*args, "--learning-rate", "1e-3", "--eos", "always"))
    assert (config.learning_rate, config.per_device_train_batch_size, config.eos) == (1e-3, 4, "always")


def test_train_help_shows_the_fields_own_help(capsys):
    from sami.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    for name in ("beta", "logprob_chunk_size", "learning_rate", "warmup_steps"):
        help_text = "".join(SAMIConfig.__dataclass_fields__[name].metadata["help"].split())
        assert help_text and help_text in out, name
    assert "--per-device-train-batch-size" in out and "--output-dir" in out


def test_output_dir_is_required():
    with pytest.raises(SystemExit) as exit_info:
        parse_train("--samples", "s.jsonl")
    assert exit_info.value.code == 2


def test_pin_memory_only_with_an_accelerator(tmp_path, monkeypatch):
    assert SAMIConfig(output_dir=str(tmp_path)).dataloader_pin_memory is torch.accelerator.is_available()
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    assert SAMIConfig(output_dir=str(tmp_path)).dataloader_pin_memory is False


def test_cpu_training_warns_nothing_about_pin_memory(tmp_path, tiny_model_dir):
    if torch.accelerator.is_available():
        pytest.skip("an accelerator is present: pinned memory is used")
    samples = tmp_path / "samples.jsonl"
    records = [
        {"id": f"q{i}", "prompts": [f"Be kind {i}.", f"Be rude {i}."], "responses": ["Hi.", "No."]} for i in range(2)
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in records))
    # use_cpu is not set, as in `sami run` and `sami train` (TrainingArguments turns pinning off under use_cpu).
    config = SAMIConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, report_to="none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_sami(tiny_model_dir, samples, tmp_path / "out", config)
    assert [str(w.message) for w in caught if "pin_memory" in str(w.message)] == []
