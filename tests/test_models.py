"""Model loading: the bundled default, the GGUF conversion cache, unknown hub ids, and the CLI's bad-input path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sami.models as models
from sami.data import bundled_queries_path
from sami.errors import SamiInputError


@pytest.mark.slow
def test_default_model_loads_and_knows_english(default_model, default_tokenizer):
    assert default_model.config.model_type == "llama"
    assert default_model.config.vocab_size == 49152 == len(default_tokenizer)
    assert next(default_model.parameters()).dtype == torch.float32
    assert default_tokenizer.eos_token_id == 2 and default_tokenizer.pad_token_id == 2
    post = json.loads(bundled_queries_path("tldr_validation").open().readline())["query"]
    ids = default_tokenizer(post, return_tensors="pt").input_ids[:, :128]
    shuffled = ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        nll = default_model(input_ids=ids, labels=ids).loss.item()
        nll_shuffled = default_model(input_ids=shuffled, labels=shuffled).loss.item()
    # A correctly converted model predicts a real post far better than the same tokens shuffled (≈ 2.9 vs 7.6 nats).
    assert nll < 3.5 and nll_shuffled > nll + 3


def test_gguf_conversion_is_cached(tmp_path, monkeypatch):
    """The first load of a GGUF file converts it under $SAMI_CACHE; later loads reuse the folder."""
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    monkeypatch.setenv("SAMI_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_convert(gguf_file, out_dir):
        calls.append(Path(gguf_file))
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{}")
        return Path(out_dir)

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    first, _ = models.resolve_model_path(gguf)
    second, _ = models.resolve_model_path(str(gguf))
    assert calls == [gguf]
    assert first == second and Path(first).is_relative_to(tmp_path / "cache")


def test_default_model_is_not_reconverted(default_model_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the default model was converted again")

    monkeypatch.setattr(models, "convert_gguf", fail)
    assert models.default_model_path() == default_model_path
    assert models.resolve_model_path("default")[0] == str(default_model_path)


@pytest.mark.parametrize("loader", [models.load_model, models.load_tokenizer])
def test_unknown_hub_id_is_a_one_line_input_error(loader, monkeypatch):
    import huggingface_hub.constants

    # No test may reach the network (the environment variable is read once, at import).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SamiInputError) as err:
        loader("sami-tests-nonexistent/no-such-model")
    message = str(err.value)
    assert "\n" not in message
    assert "sami-tests-nonexistent/no-such-model" in message and "cache" in message


def test_missing_local_folder_is_an_input_error(tmp_path):
    with pytest.raises(SamiInputError, match="not found"):
        models.load_model(str(tmp_path / "nowhere" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SamiInputError, match="no config.json"):
        models.load_model(tmp_path / "empty")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sami.cli", *args], capture_output=True, text=True, env=env)


def test_cli_bad_samples_exit_2_without_traceback(tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"id": "a", "prompts": ["x", "y"], "responses": ["z", "w"]}\n{"id": "b", "prompts": ["x"]}\n')
    out = run_cli("train", "--samples", str(samples), "--output-dir", str(tmp_path / "out"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert f"{samples}:2: missing field 'responses'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_unknown_model_exit_2(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    from sami.cli import main

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"id": "a", "prompts": ["x", "y"], "responses": ["z", "w"]}\n')
    assert main(["train", "--samples", str(samples), "--model", "nobody/nothing", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sami train: error: model 'nobody/nothing'") and "cache" in err
