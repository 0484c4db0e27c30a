"""The exported checkpoint is in the training dtype (bf16 when training in bf16), with its tokenizer, and reloads."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file
from test_distributed import _samples

from sami.cli import main
from sami.export_dtype import drop_tied_copies
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


def test_the_second_copy_of_a_tied_weight_is_dropped_and_reloads_tied(tmp_path, tiny_model_dir):
    """FSDP's gathered state dict holds a tied `lm_head.weight` as a separate copy; the export keeps one, in every
    shard file and the index, and the model reloads with its head tied to the embedding."""
    saved = load_file(tiny_model_dir / "model.safetensors")
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    embed = saved.pop("model.embed_tokens.weight")
    save_file({"model.embed_tokens.weight": embed}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({**saved, "lm_head.weight": embed.clone()}, tmp_path / "model-00002-of-00002.safetensors")
    files = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}
    files.update({k: "model-00002-of-00002.safetensors" for k in [*saved, "lm_head.weight"]})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": files}))
    tied = {"lm_head.weight": "model.embed_tokens.weight"}
    assert drop_tied_copies(tmp_path, {"lm_head.weight": "missing.weight"}) == []  # its source is not saved
    assert drop_tied_copies(tmp_path, tied) == ["lm_head.weight"]
    assert "lm_head.weight" not in load_file(tmp_path / "model-00002-of-00002.safetensors")
    assert "lm_head.weight" not in json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    model = load_model(tmp_path)
    assert torch.equal(model.lm_head.weight, embed) and model.lm_head.weight is model.model.embed_tokens.weight
    assert drop_tied_copies(tmp_path, tied) == []
