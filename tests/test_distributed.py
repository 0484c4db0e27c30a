"""Multi-process stages under `accelerate launch` on the CPU (gloo): training, self-generation, `sami run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_pipeline import tiny_config, write_config

from sami.cli import main
from sami.constitutions import load_constitutions
from sami.errors import SamiInputError
from sami.io import read_jsonl
from sami.launch import ACCELERATE_CONFIGS, accelerate_command, accelerate_config_path, launch_env

pytestmark = pytest.mark.slow


def launch(sami_args: list[str], num_processes: int = 2, **popen) -> subprocess.Popen:
    cmd = accelerate_command(sami_args, num_processes=num_processes, cpu=True)
    env = {**os.environ, **launch_env(cpu=True)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def test_shipped_accelerate_configs_resolve_and_parse(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}
    for name in ACCELERATE_CONFIGS:
        cfg = load_config_from_file(str(accelerate_config_path(name)))
        assert cfg.distributed_type.value == kinds[name]
    fsdp = load_config_from_file(str(accelerate_config_path("fsdp"))).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert load_config_from_file(str(accelerate_config_path("zero3"))).deepspeed_config["zero3_save_16bit_model"]
    with pytest.raises(SamiInputError, match="nope"):
        accelerate_config_path("nope")
    own = tmp_path / "mine.yaml"
    own.write_text("distributed_type: NO\n")
    assert accelerate_config_path(str(own)) == own
    cmd = accelerate_command(["train"], num_processes=8, config="fsdp", cpu=False, main_process_port=1234)
    assert cmd[cmd.index("--config_file") + 1].endswith("fsdp.yaml") and cmd[-3:] == ["-m", "sami.cli", "train"]
    assert "--cpu" not in cmd and cmd[cmd.index("--num_processes") + 1] == "8"


def _samples(path: Path, n: int = 8) -> Path:
    with path.open("w") as f:
        for i in range(n):
            rec = {
                "id": f"q{i}",
                "prompts": [f"Be kind. Question {i}: hello?", f"Be rude. Question {i}: hello?"],
                "responses": [f"Hello there, friend number {i}.", f"Go away {i * 3}!"],
            }
            f.write(json.dumps(rec) + "\n")
    return path


def test_two_process_training_matches_one_process(tmp_path, tiny_model_dir):
    """2 ranks x 2 queries per step (DDP over gloo) = 1 rank x 4 queries per step, same seed and sample order."""
    from safetensors.torch import load_file

    samples = _samples(tmp_path / "samples.jsonl")
    common = ["train", "--samples", str(samples), "--model", str(tiny_model_dir), "--max-steps", "2"]
    common += ["--learning-rate", "1e-3", "--seed", "0", "--report-to", "none"]
    # The two-process run goes through `sami train --num-processes 2`, which relaunches itself under accelerate.
    two_args = [*common, "--output-dir", str(tmp_path / "two"), "--per-device-train-batch-size", "2"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sami.cli", *two_args, "--num-processes", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert main([*common, "--output-dir", str(tmp_path / "one"), "--per-device-train-batch-size", "4"]) == 0
    finish(proc)
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert one.keys() == two.keys()
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-5
    assert max((one[k] - start[k]).abs().max().item() for k in one) > 5e-4  # training moved the weights
    # The Trainer's loss is reduced across ranks; rank 0 alone wrote the log.
    logs_one = json.loads((tmp_path / "one" / "log_history.json").read_text())
    logs_two = json.loads((tmp_path / "two" / "log_history.json").read_text())
    losses = [(a["loss"], b["loss"]) for a, b in zip(logs_one, logs_two, strict=False) if "loss" in a]
    assert len(losses) == 2 and all(abs(a - b) < 1e-4 for a, b in losses)
    # SAMI metrics are averaged and token counts summed over ranks, so they match the one-process run.
    for a, b in zip(logs_one, logs_two, strict=False):
        if "sami/loss" in a:
            assert abs(a["sami/loss"] - b["sami/loss"]) < 1e-4 and a["num_tokens"] == b["num_tokens"]


DYING_RANK = """
import os, sys
import sami.sampling

chunk = sami.sampling._generate_chunk
calls = []


def dying_chunk(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2 and os.environ.get("RANK") == "1":
        os._exit(9)
    return chunk(*args, **kwargs)


sami.sampling._generate_chunk = dying_chunk
from sami.cli import main

sys.exit(main(sys.argv[1:]))
"""


def _generation_run(tmp_path: Path, model_dir: Path, name: str) -> Path:
    """A run folder holding what `sami stage generate` reads: config.yaml and constitutions.json."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    cfg = tiny_config(model_dir, generation={"backend": "hf", "batch_size": 1})  # batch 1: no padding effects
    cfg["sampling"]["chunk_size"] = 1
    cfg["data"]["train_per_iteration"] = 4
    write_config(run_dir / "config.yaml", cfg)
    load_constitutions("hh_opus").save(run_dir / "constitutions.json")
    return run_dir


def test_two_process_generation_matches_one_process_and_survives_a_kill(tmp_path, tiny_model_dir):
    from sami.distributed import shard_paths

    stage = ["stage", "generate", "--iteration", "1", "--no-progress"]
    one = _generation_run(tmp_path, tiny_model_dir, "one")
    assert main([*stage, "--run-dir", str(one)]) == 0
    expected = (one / "iter-1" / "samples.jsonl").read_text()
    assert len(read_jsonl(one / "iter-1" / "samples.jsonl")) == 8

    two = _generation_run(tmp_path, tiny_model_dir, "two")
    out = two / "iter-1" / "samples.jsonl"
    # Rank 1 dies right after flushing its first chunk; the launcher then stops rank 0 as well.
    dying = tmp_path / "dying_rank.py"
    dying.write_text(DYING_RANK)
    cmd = accelerate_command([*stage, "--run-dir", str(two)], num_processes=2, cpu=True)
    cmd = [*cmd[: cmd.index("-m", 3)], str(dying), *cmd[cmd.index("-m", 3) + 2 :]]
    env = {**os.environ, **launch_env(cpu=True), "PYTHONPATH": str(Path(__file__).parent)}
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert crashed.returncode != 0
    assert not out.exists() and len(shard_paths(out)) >= 1
    assert len(read_jsonl(two / "iter-1" / "samples.rank1.jsonl")) == 1
    finish(launch([*stage, "--run-dir", str(two)]))
    assert out.read_text() == expected
    assert not shard_paths(out)
    stats = json.loads((two / "iter-1" / "samples.stats.json").read_text())
    assert stats["processes"] == 2 and stats["kept"] + stats["dropped"] == 8 == stats["queries"]
    assert stats["seed"] == 1  # the run seed 0 + iteration 1, through `sami stage generate` on both ranks

    # A rerun of a finished stage adds nothing.
    finish(launch([*stage, "--run-dir", str(two)]))
    assert out.read_text() == expected


def test_sami_run_with_the_accelerate_launcher(tmp_path, tiny_model_dir):
    cfg = tiny_config(tiny_model_dir, launcher={"kind": "accelerate", "num_processes": 2})
    cfg["iterations"] = {"count": 1, "steps": [1]}
    cfg["data"]["train_per_iteration"] = 2  # 4 queries: one step of 2 per rank
    run_dir = tmp_path / "run"
    config_path = write_config(tmp_path / "cfg.yaml", cfg)
    assert main(["run", str(config_path), "--output-dir", str(run_dir)]) == 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {"iter-1/samples", "iter-1/train", "iter-1/metrics", "report"} <= set(manifest["stages"])
    stats = json.loads((run_dir / "iter-1" / "samples.stats.json").read_text())
    assert stats["processes"] == 2 and stats["queries"] == 4
    assert (run_dir / "iter-1" / "train" / "model.safetensors").is_file()
    assert not (run_dir / "iter-1" / "train.partial").exists()
    logs = json.loads((run_dir / "iter-1" / "train" / "log_history.json").read_text())
    assert logs and logs[0]["step"] == 1
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["launcher"]["num_processes"] == 2
