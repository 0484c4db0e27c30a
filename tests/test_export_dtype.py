"""The exported checkpoint is in the training dtype (bf16 when training in bf16), with its tokenizer, and reloads."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from test_distributed import _samples

from sami.cli import main
from sami.models import load_model, load_tokenizer


def test_bf16_training_exports_bf16_weights_with_the_tokenizer(tmp_path, tiny_model_dir):
    samples = _samples(tmp_path / "samples.jsonl", n=2)
    args = ["train", "--samples", str(samples), "--model", str(tiny_model_dir), "--max-steps", "1"]
    args += ["--per-device-train-batch-size", "2", "--report-to", "none", "--learning-rate", "1e-3"]
    assert main([*args, "--output-dir", str(tmp_path / "bf16"), "--bf16", "true"]) == 0
    assert main([*args, "--output-dir", str(tmp_path / "fp32")]) == 0
    bf16, fp32 = load_file(tmp_path / "bf16" / "model.safetensors"), load_file(tmp_path / "fp32" / "model.safetensors")
    assert {t.dtype for t in bf16.values()} == {torch.bfloat16} and {t.dtype for t in fp32.values()} == {torch.float32}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_tokenizer(tmp_path / "bf16").encode("hello") == load_tokenizer(tiny_model_dir).encode("hello")
    model = load_model(tmp_path / "bf16", dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert (tmp_path / "bf16" / "log_history.json").is_file()  # still written last
