"""The LM head under DeepSpeed ZeRO-3 (CPU accelerator, gloo, 2 processes) with `logprob_chunk_size` asked for:
the chunked head, forced on there, trained weights 1e-4 away from the unsharded run, so under ZeRO-3 sami keeps
the unchunked path (`sami.lm_head._SHARDING_HOOK_MODULES`), and the weights equal one unsharded process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from test_distributed import _samples

from sami.cli import main


@pytest.mark.slow
def test_zero3_keeps_the_unchunked_head_and_trains_the_unsharded_weights(tmp_path, tiny_model_dir):
    pytest.importorskip("deepspeed", reason="pip install 'sami[deepspeed]' (make install-test installs it)")
    from safetensors.torch import load_file

    samples = _samples(tmp_path / "samples.jsonl")
    common = ["train", "--samples", str(samples), "--model", str(tiny_model_dir), "--max-steps", "2"]
    common += ["--learning-rate", "1e-3", "--seed", "0", "--report-to", "none"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}
    args = [*common, "--output-dir", str(tmp_path / "zero3"), "--per-device-train-batch-size", "2"]
    args += ["--logprob-chunk-size", "3", "--accelerate-config", "zero3", "--num-processes", "2"]
    proc = subprocess.run(
        [sys.executable, "-m", "sami.cli", *args], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    info = json.loads((tmp_path / "zero3" / "train_info.json").read_text())
    assert info["distributed_type"] == "DistributedType.DEEPSPEED" and info["head_chunk_sizes"] == [0]
    one = [*common, "--output-dir", str(tmp_path / "one"), "--per-device-train-batch-size", "4"]
    assert main([*one, "--logprob-chunk-size", "0"]) == 0
    assert json.loads((tmp_path / "one" / "train_info.json").read_text())["head_chunk_sizes"] == [0]
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "zero3" / "model.safetensors")
    start = load_file(tiny_model_dir / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 5e-4
