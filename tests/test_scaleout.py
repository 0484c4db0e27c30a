"""Scale-out on one CPU machine (gloo): two "nodes" on loopback, `sami run` under the fsdp launcher config, the
multi-machine launcher options, the shipped ZeRO-3 config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from test_distributed import _samples
from test_pipeline import tiny_config, write_config

from sami.cli import main
from sami.errors import SamiInputError
from sami.launch import accelerate_command, accelerate_config_path, launch_env, launcher_command, uses_deepspeed
from sami.run_config import parse_config


def test_launcher_accepts_accelerates_multi_machine_options(tiny_model_dir):
    cfg = tiny_config(tiny_model_dir)
    cfg["launcher"] = {
        "kind": "accelerate",
        "num_processes": 16,
        "num_machines": 2,
        "machine_rank": 1,
        "main_process_ip": "10.0.0.1",
        "main_process_port": 29500,
        "config": "fsdp",
    }
    launcher = parse_config(cfg).launcher
    cmd = launcher_command(launcher, ["stage", "train"])
    flag = {name: cmd[cmd.index(name) + 1] for name in ("--num_processes", "--num_machines", "--machine_rank")}
    assert flag == {"--num_processes": "16", "--num_machines": "2", "--machine_rank": "1"}
    assert cmd[cmd.index("--main_process_ip") + 1] == "10.0.0.1"
    assert cmd[cmd.index("--main_process_port") + 1] == "29500"
    for bad, field in [
        ({"machine_rank": 2}, "machine_rank 2 is not below num_machines 2"),
        ({"main_process_ip": None}, "main_process_ip is needed"),
        ({"main_process_port": None}, "main_process_port is needed"),
        ({"num_processes": 3}, "not a multiple of num_machines"),
    ]:
        with pytest.raises(SamiInputError, match=field):
            parse_config({**cfg, "launcher": {**cfg["launcher"], **bad}})
    with pytest.raises(SamiInputError, match="main_process_ip"):
        accelerate_command(["train"], num_processes=2, num_machines=2, cpu=True)


def test_cpu_launch_keeps_deepspeed_configs_and_drops_the_others():
    zero3 = accelerate_command(["train"], num_processes=2, config="zero3", cpu=True)
    assert zero3[zero3.index("--config_file") + 1].endswith("zero3.yaml") and "--multi_gpu" not in zero3
    assert zero3[zero3.index("--mixed_precision") + 1] == "no" and uses_deepspeed(zero3)
    assert "ACCELERATE_USE_CPU" not in launch_env(cpu=True, deepspeed=True)
    fsdp = accelerate_command(["train"], num_processes=2, config="fsdp", cpu=True)
    assert "--config_file" not in fsdp and "--multi_gpu" in fsdp and not uses_deepspeed(fsdp)
    assert launch_env(cpu=True)["ACCELERATE_USE_CPU"] == "true"


@pytest.mark.slow
def test_two_nodes_on_loopback_train_the_single_process_weights(tmp_path, tiny_model_dir):
    """Two `sami train` launches, one per "node" of one process each, meet on 127.0.0.1 through the real
    `accelerate launch` (torchrun, static rendezvous, gloo): the weights of one process with the same global batch."""
    from conftest import free_port
    from safetensors.torch import load_file

    samples = _samples(tmp_path / "samples.jsonl")
    common = ["train", "--samples", str(samples), "--model", str(tiny_model_dir), "--max-steps", "2"]
    common += ["--learning-rate", "1e-3", "--seed", "0", "--report-to", "none"]
    port = str(free_port())
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}
    nodes = []
    for rank in (0, 1):
        args = [*common, "--output-dir", str(tmp_path / "nodes"), "--per-device-train-batch-size", "2"]
        args += ["--num-processes", "2", "--num-machines", "2", "--machine-rank", str(rank)]
        args += ["--main-process-ip", "127.0.0.1", "--main-process-port", port]
        nodes.append(
            subprocess.Popen(
                [sys.executable, "-m", "sami.cli", *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    assert main([*common, "--output-dir", str(tmp_path / "one"), "--per-device-train-batch-size", "4"]) == 0
    for node in nodes:
        out, _ = node.communicate(timeout=300)
        assert node.returncode == 0, out[-3000:]
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "nodes" / "model.safetensors")
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    assert max((one[k] - start[k]).abs().max().item() for k in one) > 5e-4
    logs_one = [h for h in json.loads((tmp_path / "one" / "log_history.json").read_text()) if "loss" in h]
    logs_two = [h for h in json.loads((tmp_path / "nodes" / "log_history.json").read_text()) if "loss" in h]
    assert len(logs_two) == 2
    for a, b in zip(logs_one, logs_two, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4 and a["num_tokens"] == b["num_tokens"]


@pytest.mark.slow
def test_sami_run_with_the_fsdp_launcher_config_matches_one_process(tmp_path, tiny_model_dir):
    """The toy end-to-end run with `launcher: {kind: accelerate, config: fsdp, num_processes: 2}`. On the CPU
    accelerate runs the two ranks as MULTI_CPU data parallelism over gloo (it enables FSDP only on GPU-class
    devices), so this checks the launch, the data-parallel stages and the metrics, not FSDP sharding."""
    cfg = tiny_config(tiny_model_dir)
    cfg["iterations"] = {"count": 1, "steps": [2]}
    cfg["data"]["train_per_iteration"] = 4  # 8 queries: 2 steps of 4 (2 per rank)
    cfg["generation"] = {"backend": "hf", "batch_size": 1}  # batch 1: no padding effects between the two runs
    one_cfg = {**cfg, "training": {**cfg["training"], "per_device_train_batch_size": 4}}
    two_cfg = {**cfg, "launcher": {"kind": "accelerate", "num_processes": 2, "config": "fsdp"}}
    assert main(["run", str(write_config(tmp_path / "one.yaml", one_cfg)), "--output-dir", str(tmp_path / "one")]) == 0
    assert main(["run", str(write_config(tmp_path / "two.yaml", two_cfg)), "--output-dir", str(tmp_path / "two")]) == 0
    run = tmp_path / "two"
    assert json.loads((run / "iter-1" / "samples.stats.json").read_text())["processes"] == 2
    assert not (run / "iter-1" / "train.partial").exists()
    assert not list((run / "iter-1" / "train").glob("checkpoint-*"))
    for t in (0, 1):
        a = json.loads((tmp_path / "one" / f"iter-{t}" / "eval" / "metrics.json").read_text())
        b = json.loads((run / f"iter-{t}" / "eval" / "metrics.json").read_text())
        for key in ("mi", "mi_bound"):
            assert abs(a[key] - b[key]) < 1e-4, (t, key, a[key], b[key])
        assert a["mean_length"] == b["mean_length"]
    samples = [
        sorted(json.loads(line)["id"] for line in (r / "iter-1" / "samples.jsonl").open())
        for r in (tmp_path / "one", run)
    ]
    assert samples[0] == samples[1]


def test_shipped_zero3_config_is_valid_for_accelerate(tmp_path):
    """accelerate parses the ZeRO-3 config and builds its DeepSpeed plugin from it (what `accelerate launch
    --config_file zero3.yaml` does before starting the ranks)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    cfg = load_config_from_file(str(accelerate_config_path("zero3")))
    assert cfg.distributed_type.value == "DEEPSPEED"
    ds = cfg.deepspeed_config
    plugin = DeepSpeedPlugin(
        zero_stage=ds["zero_stage"],
        offload_optimizer_device=ds["offload_optimizer_device"],
        offload_param_device=ds["offload_param_device"],
        zero3_init_flag=ds["zero3_init_flag"],
        zero3_save_16bit_model=ds["zero3_save_16bit_model"],
    )
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == "auto"  # filled in by the Trainer


def zero3_and_one_process(
    tmp_path: Path, model_dir: Path, zero3_flags: tuple[str, ...] = (), one_flags: tuple[str, ...] = ()
) -> tuple[Path, Path]:
    """`sami train` of `model_dir` for 2 steps under ZeRO-3 on 2 CPU processes (DeepSpeed's CPU accelerator, gloo;
    batch 2 each, plus `zero3_flags`) and in one process (batch 4, plus `one_flags`); returns the folders
    (one, zero3)."""
    pytest.importorskip("deepspeed", reason="pip install 'sami[deepspeed]' (make install-test installs it)")
    samples = _samples(tmp_path / "samples.jsonl")
    common = ["train", "--samples", str(samples), "--model", str(model_dir), "--max-steps", "2"]
    common += ["--learning-rate", "1e-3", "--seed", "0", "--report-to", "none"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT / "src")}
    args = [*common, "--output-dir", str(tmp_path / "zero3"), "--per-device-train-batch-size", "2", *zero3_flags]
    proc = subprocess.run(
        [sys.executable, "-m", "sami.cli", *args, "--accelerate-config", "zero3", "--num-processes", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # the first DeepSpeed launch on a machine compiles its shared-memory op (minutes)
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    one = [*common, "--output-dir", str(tmp_path / "one"), "--per-device-train-batch-size", "4", *one_flags]
    assert main(one) == 0
    return tmp_path / "one", tmp_path / "zero3"


def assert_same_trained_weights(one: Path, zero3: Path, model_dir: Path) -> None:
    """The two runs' weights agree to 1e-5 and moved more than 5e-4 from the start."""
    from safetensors.torch import load_file

    a, b = load_file(one / "model.safetensors"), load_file(zero3 / "model.safetensors")
    start = load_file(Path(model_dir) / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 5e-4


@pytest.mark.slow
def test_zero3_on_cpu_trains_the_single_process_weights(tmp_path, tiny_model_dir):
    """`sami train --accelerate-config zero3 --num-processes 2` with DeepSpeed's CPU accelerator (gloo): ZeRO
    stage 3 partitions the weights, gradients and optimizer states over the two ranks, and the 16-bit-save path
    gathers them into the final safetensors; the result equals one process with the same global batch."""
    one, zero3 = zero3_and_one_process(tmp_path, tiny_model_dir)
    assert_same_trained_weights(one, zero3, tiny_model_dir)
    assert (zero3 / "training_args.bin").is_file()  # only the DeepSpeed/FSDP save path writes it
    logs = json.loads((zero3 / "log_history.json").read_text())
    assert [h["step"] for h in logs if "loss" in h] == [1, 2]
    assert not list(zero3.glob("checkpoint-*")) and not list(zero3.glob("global_step*"))
