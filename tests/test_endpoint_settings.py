"""`EndpointSettings` declared once and embedded by every settings class that calls a server; the per-backend
and per-kind settings classes (`GenerationSettings`, `JudgeSettings`) refuse fields of another member."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from pydantic import BaseModel

import sami
from sami.cli_settings import validate
from sami.endpoint import DEFAULT_MAX_RETRIES, EndpointSettings
from sami.errors import SamiInputError
from sami.evaluation.judge_settings import ApiJudgeSettings, JudgeSettings, LocalJudgeSettings, RulesJudgeSettings
from sami.generation import GenerationSettings, HFGeneration, OpenAIGeneration, VLLMGeneration
from sami.run_config import WriterSettings

SERVER_CALLERS = (OpenAIGeneration, ApiJudgeSettings, WriterSettings)
# where a server caller keeps another default than the endpoint's, with the reason in the field's description
OWN_DEFAULTS = {(ApiJudgeSettings, "max_retries"): 2}


def _all_settings_classes() -> set[type[BaseModel]]:
    for info in pkgutil.walk_packages(sami.__path__, "sami."):
        importlib.import_module(info.name)
    out, todo = set(), [BaseModel]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub.__module__.startswith("sami.") and sub not in out:
                out.add(sub)
                todo.append(sub)
    return out


def test_every_server_calling_settings_class_embeds_endpoint_settings():
    endpoint = EndpointSettings.model_fields
    assert endpoint["max_retries"].default == DEFAULT_MAX_RETRIES
    for cls in SERVER_CALLERS:
        assert issubclass(cls, EndpointSettings), cls
        for name, info in endpoint.items():
            expected = OWN_DEFAULTS.get((cls, name), info.default)
            assert cls.model_fields[name].default == expected, (cls.__name__, name)
    assert "not the endpoint's 5" in ApiJudgeSettings.model_fields["max_retries"].description
    # no settings class of the package declares an endpoint field without embedding EndpointSettings
    for cls in _all_settings_classes():
        if {"base_url", "api_key_env"} & set(cls.model_fields):
            assert issubclass(cls, EndpointSettings), cls


@pytest.mark.parametrize(
    "union, raw, line",
    [
        (
            GenerationSettings,
            {"backend": "openai", "batch_size": 4},
            "batch_size: a setting of backend hf only",
        ),
        (GenerationSettings, {"backend": "hf", "base_url": "http://x/v1"}, "base_url: a setting of backend"),
        (GenerationSettings, {"backend": "hf", "tensor_parallel_size": 2}, "tensor_parallel_size: a setting of "),
        (GenerationSettings, {"backend": "vllm", "share_prefix": False}, "share_prefix: a setting of backend hf"),
        (GenerationSettings, {"backend": "tgi"}, "backend: expected one of 'hf', 'vllm', 'openai'"),
        (GenerationSettings, {"backend": "hf", "batchsize": 4}, "batchsize: unknown key"),
        (GenerationSettings, {"batch_size": "x"}, "batch_size: expected an integer"),
        (JudgeSettings, {"kind": "api", "batch_size": 8}, "batch_size: a setting of kind local only"),
        (JudgeSettings, {"kind": "local", "timeout": 5}, "timeout: a setting of kind api only"),
        (JudgeSettings, {"kind": "rules", "both_orders": True}, "both_orders: a setting of kind api/local"),
        (
            JudgeSettings,
            {"preset": "paper", "batch_size": 8},
            "batch_size: a setting of kind local only, not of kind api",
        ),
    ],
)
def test_a_field_of_another_member_is_refused_in_one_line(union, raw, line):
    with pytest.raises(SamiInputError) as err:
        validate(union, raw, source="f.yaml")
    message = str(err.value)
    assert message.startswith(f"f.yaml: {line}") and "\n" not in message, message


def test_members_hold_only_their_fields_and_defaults_of_others_pass():
    assert type(validate(GenerationSettings, {})) is HFGeneration
    assert type(validate(GenerationSettings, {"backend": "vllm"})) is VLLMGeneration
    openai = validate(GenerationSettings, {"backend": "openai", "batch_size": 8})  # a resolved old config: default
    assert type(openai) is OpenAIGeneration and not hasattr(openai, "batch_size")
    assert not hasattr(validate(GenerationSettings, {}), "base_url")
    assert type(validate(JudgeSettings, {})) is LocalJudgeSettings
    assert type(validate(JudgeSettings, {"preset": "paper", "model_name": "m"})) is ApiJudgeSettings
    rules = validate(JudgeSettings, {"kind": "rules"})
    assert type(rules) is RulesJudgeSettings and set(rules.model_dump()) == {"kind"}


def test_a_nested_error_names_the_section_without_the_member_tag(tmp_path):
    from sami.run_config import load_config

    path = tmp_path / "run.yaml"
    path.write_text(
        "constitutions: hh_opus\ndata: {train: [{bundled: hh_helpful_train}], eval: [{bundled: hh_helpful_train}]}\n"
        "generation: {backend: openai, server_port: 0}\n"
    )
    with pytest.raises(SamiInputError, match=r"^.*run\.yaml: generation\.server_port: "):
        load_config(path)


@pytest.mark.parametrize("name", ["tldr_llama3_70b_diverse.yaml", "hh_mistral7b.yaml", "demo.yaml"])
def test_a_resolved_config_dumps_only_its_members_fields_and_loads_again(name, tmp_path):
    from conftest import ROOT

    from sami.pipeline import config_hash
    from sami.run_config import config_to_yaml, load_config

    config = load_config(ROOT / "configs" / name)
    path = tmp_path / "resolved.yaml"
    path.write_text(config_to_yaml(config))
    again = load_config(path)
    assert again == config and config_hash(again) == config_hash(config)
    dumped = config.model_dump()
    assert set(dumped["generation"]) == set(type(config.generation).model_fields)
    assert set(dumped["evaluation"]["judge"]) == set(type(config.evaluation.judge).model_fields)
