"""The optimizer `training.optim` names is the one that steps (`sami.optimizer_guard`): under `accelerate launch`
with each shipped launcher config that runs on the CPU (ZeRO-3 with optimizer offload included), and refused in
one line where it would not be."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import ROOT
from test_distributed import _samples

from sami.errors import SamiInputError
from sami.launch import accelerate_config_path
from sami.optimizer_guard import OptimizerCheck, keep_torch_optimizer, stepping_optimizer

RMSPROP = "torch.optim.rmsprop.RMSprop"


def _fake_trainer(config: dict):
    plugin = SimpleNamespace(deepspeed_config=config)
    accelerator = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin))
    return SimpleNamespace(accelerator=accelerator, is_deepspeed_enabled=True, args=SimpleNamespace(optim="rmsprop"))


def test_zero_offload_keeps_the_torch_optimizer_and_a_deepspeed_optimizer_section_is_refused():
    config = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}}
    keep_torch_optimizer(_fake_trainer(config))
    assert config["zero_force_ds_cpu_optimizer"] is False  # accelerate then skips map_pytorch_optim_to_deepspeed
    with pytest.raises(SamiInputError, match=r"'optimizer' section \(AdamW\) would replace training.optim=rmsprop"):
        keep_torch_optimizer(_fake_trainer({"optimizer": {"type": "AdamW"}}))


def test_the_stepping_optimizer_is_found_under_wrappers_and_a_swap_is_refused():
    param = torch.nn.Parameter(torch.zeros(2))
    inner = torch.optim.Adam([param])
    wrapped = SimpleNamespace(optimizer=SimpleNamespace(optimizer=inner))  # accelerate → DeepSpeed → torch
    assert stepping_optimizer(wrapped) is inner
    trainer = SimpleNamespace(
        optimizer=wrapped, model=None, get_optimizer_cls_and_kwargs=lambda args, model: (torch.optim.RMSprop, {})
    )
    with pytest.raises(SamiInputError, match="training.optim=rmsprop names torch.optim.rmsprop.RMSprop, but "):
        OptimizerCheck(trainer).on_train_begin(SimpleNamespace(optim="rmsprop"), None, None)


def _zero3_offload(path: Path) -> Path:
    cfg = yaml.safe_load(accelerate_config_path("zero3").read_text())
    cfg["deepspeed_config"]["offload_optimizer_device"] = "cpu"  # the 70B recipe's
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["ddp", "fsdp", "zero3", "zero3-offload"])
def test_the_named_optimizer_steps_under_each_launcher_config(tmp_path, tiny_model_dir, launcher):
    if launcher.startswith("zero3"):
        pytest.importorskip("deepspeed", reason="pip install 'sami[deepspeed]' (make install-test installs it)")
    config = str(_zero3_offload(tmp_path / "zero3_offload.yaml")) if launcher == "zero3-offload" else launcher
    out = tmp_path / "out"
    args = ["train", "--samples", str(_samples(tmp_path / "samples.jsonl")), "--model", str(tiny_model_dir)]
    args += ["--max-steps", "1", "--optim", "rmsprop", "--learning-rate", "1e-4", "--report-to", "none"]
    args += ["--output-dir", str(out), "--per-device-train-batch-size", "2"]
    args += ["--accelerate-config", config, "--num-processes", "2"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "sami.cli", *args], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    info = json.loads((out / "train_info.json").read_text())
    assert info["optimizer"] == RMSPROP and info["num_processes"] == 2
    assert info["distributed_type"] == (
        "DistributedType.DEEPSPEED" if launcher.startswith("zero3") else "DistributedType.MULTI_CPU"
    )
