"""`model.attn_implementation` reaches training and evaluation's scoring; FlexAttention's forward equals sdpa on
the CPU, its CPU backward (which PyTorch does not have) and flash_attention_2 (no 4D mask) are refused in one line."""

from __future__ import annotations

import pytest
import torch
import yaml
from test_distributed import _samples
from test_lm_head import TOL, packed_batch
from test_pipeline import tiny_config, write_config

import sami.models
from sami.cli import main
from sami.errors import SamiInputError
from sami.logprobs import packed_logprobs
from sami.models import load_model
from sami.pipeline import Pipeline
from sami.run_config import parse_config
from sami.sami_config import SAMIConfig
from sami.stage_settings import training_arguments
from sami.trainer import train_sami


@pytest.mark.slow
def test_flex_attention_loaded_by_name_scores_like_sdpa(tiny_model_dir, default_tokenizer):
    """Compiles FlexAttention's CPU forward (about 80 s on 2 cores)."""
    packed = packed_batch(default_tokenizer, 3)
    sdpa = load_model(tiny_model_dir, attn_implementation="sdpa").eval()
    flex = load_model(tiny_model_dir, attn_implementation="flex_attention").eval()
    assert flex.config._attn_implementation == "flex_attention"
    with torch.no_grad():
        expected = packed_logprobs(sdpa, packed)
        try:
            got = packed_logprobs(flex, packed)
        except (NotImplementedError, RuntimeError) as e:  # e.g. no C++ compiler for inductor
            pytest.skip(f"FlexAttention does not run on this CPU: {str(e).splitlines()[0][:200]}")
    torch.testing.assert_close(got, expected, **TOL)


def test_flex_attention_has_no_cpu_backward_so_cpu_training_with_it_is_refused(tmp_path, tiny_model_dir, capsys):
    from torch.nn.attention.flex_attention import flex_attention

    q = torch.randn(1, 1, 8, 4, requires_grad=True)
    with pytest.raises(NotImplementedError):  # the reason for the refusal; when PyTorch adds it, drop the refusal
        flex_attention(q, q, q).sum().backward()
    samples = _samples(tmp_path / "samples.jsonl")
    config = SAMIConfig(output_dir=str(tmp_path / "out"), attn_implementation="flex_attention", report_to=[])
    with pytest.raises(SamiInputError, match="flex_attention has no backward on the CPU"):
        train_sami(tiny_model_dir, samples, tmp_path / "out", config)
    args = ["train", "--samples", str(samples), "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "o")]
    assert main([*args, "--attn-implementation", "flex_attention", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "attn_implementation: flex_attention has no backward on the CPU" in err and len(err.splitlines()) == 1
    run = write_config(tmp_path / "cfg.yaml", tiny_config(tiny_model_dir, model={**_model(tiny_model_dir, "flex")}))
    assert main(["run", str(run), "--output-dir", str(tmp_path / "run")]) == 2
    assert "model.attn_implementation: flex_attention has no backward" in capsys.readouterr().err
    assert not (tmp_path / "run" / "iter-0").exists()  # stopped before iteration 0, not at the first training


def _model(model_dir, impl: str) -> dict:
    return {"policy": str(model_dir), "attn_implementation": "flex_attention" if impl == "flex" else impl}


def test_flash_attention_2_is_refused_in_one_line(tmp_path, tiny_model_dir, capsys):
    config = tiny_config(tiny_model_dir, model=_model(tiny_model_dir, "flash_attention_2"))
    assert main(["config", "show", str(write_config(tmp_path / "cfg.yaml", config))]) == 2
    err = capsys.readouterr().err
    assert "model.attn_implementation" in err and "flash_attention_2" in err and "4D" in err
    assert len(err.strip().splitlines()) == 1


def test_the_setting_reaches_training_and_scoring(tmp_path, tiny_model_dir, monkeypatch):
    raw = tiny_config(tiny_model_dir, model=_model(tiny_model_dir, "eager"))
    config = parse_config(yaml.safe_load(yaml.safe_dump(raw)))
    loaded = []
    real = sami.models.load_model

    def spy(*args, **kwargs):
        loaded.append(kwargs.get("attn_implementation"))
        return real(*args, **kwargs)

    monkeypatch.setattr(sami.models, "load_model", spy)
    args = training_arguments(config, output_dir=tmp_path / "out", max_steps=1)
    assert args.attn_implementation == "eager"
    train_sami(tiny_model_dir, _samples(tmp_path / "samples.jsonl", n=2), tmp_path / "out", args)
    assert loaded == ["eager"]
    pipeline = Pipeline(config, tmp_path / "run")
    pipeline.run_named("constitutions", "iter-0/responses")  # iteration 0's responses and scores
    assert loaded == ["eager", "eager"]
