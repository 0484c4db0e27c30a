"""Training resumes inside a stage: kill -9 mid-training, rerun, same weights and log history as without the kill.

A process is killed at a known step by a wrapper script that adds a callback sending SIGKILL to itself (no cleanup,
as a preemption or an OOM kill would). Runs use one thread per process, so every run reduces in the same order
and the comparisons are exact up to float32 noise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from test_distributed import _samples
from test_pipeline import tiny_config, write_config
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from sami.launch import accelerate_command, launch_env, uses_deepspeed
from sami.trainer import last_checkpoint

pytestmark = pytest.mark.slow

KILLER = """
import os, signal, sys

from transformers import TrainerCallback

import sami.trainer

if os.environ.get("SAMI_TEST_CPU_FSDP"):
    import cpu_fsdp  # FSDP on the CPU ranks (tests/cpu_fsdp.py)

STEP, RANK = int(os.environ.get("SAMI_TEST_KILL_AT_STEP", "-1")), os.environ.get("SAMI_TEST_KILL_RANK", "0")


class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == STEP and os.environ.get("RANK", "0") == RANK:
            os.kill(os.getpid(), signal.SIGKILL)


init = sami.trainer.SAMITrainer.__init__


def patched(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.add_callback(KillAt())


sami.trainer.SAMITrainer.__init__ = patched
from sami.cli import main

sys.exit(main(sys.argv[1:]))
"""

MAX_STEPS, SAVE_STEPS, KILL_AT = 5, 2, 3  # killed after step 3: resumes from checkpoint-2, redoes steps 3-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    """8 samples (2 optimizer steps of 4 per epoch: 5 steps cross two epoch boundaries) and a run config with
    AdamW and a linear schedule with warmup, so the optimizer moments and the scheduler must both be restored."""
    root = tmp_path_factory.mktemp("resume")
    cfg = tiny_config(tiny_model_dir)
    cfg["training"] = {
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 4,
        "lr_scheduler_type": "linear",
        "warmup_steps": 2,
        "report_to": [],
        "save_steps": SAVE_STEPS,
    }
    killer = root / "killer.py"
    killer.write_text(KILLER)
    return {
        "samples": _samples(root / "samples.jsonl"),
        "config": write_config(root / "cfg.yaml", cfg),
        "killer": killer,
        "root": root,
    }


def train_args(setup, out: Path, *extra: str) -> list[str]:
    args = ["train", "--config", str(setup["config"]), "--samples", str(setup["samples"]), "--output-dir", str(out)]
    return [*args, "--max-steps", str(MAX_STEPS), *extra]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1", **extra}


def run_one(setup, out: Path, *extra: str, kill_at: int | None = None) -> subprocess.CompletedProcess:
    """`sami train` in one process (through the killer script when `kill_at` is set)."""
    entry = [str(setup["killer"])] if kill_at is not None else ["-m", "sami.cli"]
    kill = {"SAMI_TEST_KILL_AT_STEP": str(kill_at)} if kill_at is not None else {}
    cmd = [sys.executable, *entry, *train_args(setup, out, *extra)]
    return subprocess.run(cmd, env=env(**kill), capture_output=True, text=True, timeout=300)


def run_two(
    setup, out: Path, *extra: str, kill_at: int | None = None, config: str | None = None
) -> subprocess.CompletedProcess:
    """`sami train` under `accelerate launch` with 2 CPU processes of 2 queries each (the same global batch)."""
    args = train_args(setup, out, "--per-device-train-batch-size", "2", *extra)
    cmd = accelerate_command(args, num_processes=2, cpu=True, config=config)
    kill = {}
    if kill_at is not None:
        at = cmd.index("-m", 3)
        cmd = [*cmd[:at], str(setup["killer"]), *cmd[at + 2 :]]
        kill = {"SAMI_TEST_KILL_AT_STEP": str(kill_at), "SAMI_TEST_KILL_RANK": "1"}
    launch = launch_env(cpu=True, deepspeed=uses_deepspeed(cmd))
    return subprocess.run(cmd, env=env(**launch, **kill), capture_output=True, text=True, timeout=900)


def run_fsdp(setup, out: Path, *extra: str, kill_at: int | None = None, precision: str = "no"):
    """`run_two` under the shipped `fsdp.yaml` (FSDP2, sharded checkpoints), its FSDP kept on the CPU ranks
    (`tests/cpu_fsdp.py`); `precision` is accelerate's `--mixed_precision` (the yaml's bf16 unless "no")."""
    args = train_args(setup, out, "--per-device-train-batch-size", "2", *extra)
    cmd = accelerate_command(
        args, num_processes=2, cpu=False, config="fsdp", extra_args=["--mixed_precision", precision]
    )
    at = cmd.index("-m", 3)
    cmd = [*cmd[:at], str(setup["killer"]), *cmd[at + 2 :]]
    kill = {"SAMI_TEST_KILL_AT_STEP": str(kill_at), "SAMI_TEST_KILL_RANK": "1"} if kill_at is not None else {}
    launch = {**launch_env(cpu=True), "CUDA_VISIBLE_DEVICES": "", "SAMI_TEST_CPU_FSDP": "1"}
    return subprocess.run(cmd, env=env(**launch, **kill), capture_output=True, text=True, timeout=900)


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def step_logs(folder: Path) -> list[dict]:
    """The per-step entries of log_history.json (the closing summary holds run times and the loss since start)."""
    return [h for h in json.loads((folder / "log_history.json").read_text()) if "loss" in h]


def killed_state(out: Path) -> None:
    """What a kill after step 3 leaves: the complete checkpoint-2 only, no exported model, no log."""
    assert last_checkpoint(out) == out / f"{PREFIX_CHECKPOINT_DIR}-{SAVE_STEPS}"
    assert sorted(p.name for p in out.glob(f"{PREFIX_CHECKPOINT_DIR}-*")) == [f"{PREFIX_CHECKPOINT_DIR}-2"]
    assert (out / "checkpoint-2" / "sami_state.json").is_file()
    assert not (out / "model.safetensors").exists() and not (out / "log_history.json").exists()


def finished_state(out: Path) -> None:
    """The exported folder holds the model and its log, never the resume checkpoints."""
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.glob(f"{PREFIX_CHECKPOINT_DIR}-*"))


@pytest.fixture(scope="module")
def uninterrupted(setup) -> Path:
    out = setup["root"] / "uninterrupted"
    ok(run_one(setup, out))
    finished_state(out)
    return out


def test_last_checkpoint_skips_folders_cut_short(tmp_path):
    for step, state in [(2, "{}"), (4, None), (6, '{"log_hist'), (10, "{}")]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    (tmp_path / "checkpoint-10" / "trainer_state.json").unlink()  # killed while writing checkpoint-10
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    assert last_checkpoint(tmp_path / "missing") is None


def test_killed_single_process_resumes_to_the_same_weights_and_log(setup, uninterrupted):
    out = setup["root"] / "killed-one"
    killed = run_one(setup, out, "--resume", kill_at=KILL_AT)
    assert killed.returncode == -9, (killed.stdout + killed.stderr)[-3000:]
    killed_state(out)
    # The rerun goes through the killer too, set to step 2: it survives only if it really starts after step 2.
    ok(run_one(setup, out, "--resume", kill_at=SAVE_STEPS))
    finished_state(out)
    assert max_diff(weights(out), weights(uninterrupted)) < 1e-5
    resumed, reference = step_logs(out), step_logs(uninterrupted)
    assert [h["step"] for h in resumed] == list(range(1, MAX_STEPS + 1))
    assert resumed == reference  # steps 1-2 from the checkpoint, 3-5 recomputed: every value equal


def test_without_resume_a_rerun_starts_over(setup):
    out = setup["root"] / "killed-no-resume"
    assert run_one(setup, out, kill_at=KILL_AT).returncode == -9
    # Without --resume the checkpoint is ignored: the rerun passes step 2 again (and is killed there).
    assert run_one(setup, out, kill_at=SAVE_STEPS).returncode == -9


def test_killed_rank_of_two_processes_resumes_to_the_same_weights_and_log(setup, uninterrupted):
    reference = setup["root"] / "two-uninterrupted"
    ok(run_two(setup, reference))
    finished_state(reference)
    out = setup["root"] / "killed-two"
    killed = run_two(setup, out, "--resume", kill_at=KILL_AT)  # rank 1 dies; the launcher stops rank 0
    assert killed.returncode != 0
    killed_state(out)
    assert (out / "checkpoint-2" / "rng_state_0.pth").is_file() and (
        out / "checkpoint-2" / "rng_state_1.pth"
    ).is_file()
    ok(run_two(setup, out, "--resume", kill_at=SAVE_STEPS))
    finished_state(out)
    assert max_diff(weights(out), weights(reference)) < 1e-5
    resumed, expected = step_logs(out), step_logs(reference)
    assert [h["step"] for h in resumed] == list(range(1, MAX_STEPS + 1))
    assert resumed == expected
    # Two ranks of 2 queries = one process of 4 (the same global batch), through the resume too.
    assert max_diff(weights(out), weights(uninterrupted)) < 1e-5
    for a, b in zip(resumed, step_logs(uninterrupted), strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4 and a["num_tokens"] == b["num_tokens"]


def test_pipeline_train_stage_resumes_in_its_partial_folder(tmp_path, tiny_model_dir, monkeypatch):
    """`sami run` keeps an interrupted `train.partial/` and trains into it with resume on (the resume itself is
    the Trainer's, tested above); the renamed `train/` is what the stage records."""
    import sami.trainer
    from sami.pipeline import Pipeline
    from sami.run_config import parse_config
    from sami.stage_parts import config_hash
    from sami.stage_settings import training_arguments

    config = parse_config(tiny_config(tiny_model_dir))
    pipeline = Pipeline(config, tmp_path / "run")
    partial = pipeline.layout.train_partial(1)
    (partial / "checkpoint-2").mkdir(parents=True)
    (partial / "checkpoint-2" / "trainer_state.json").write_text("{}")
    seen = {}

    def fake_train_sami(model_ref, samples_path, output_dir, args, *, lora=None, resume=False):
        seen.update(resume=resume, output_dir=Path(output_dir), checkpoint=last_checkpoint(output_dir))
        (Path(output_dir) / "config.json").write_text("{}")
        return Path(output_dir)

    monkeypatch.setattr(sami.trainer, "train_sami", fake_train_sami)
    pipeline.run_named("iter-1/train")
    assert seen == {"resume": True, "output_dir": partial, "checkpoint": partial / "checkpoint-2"}
    assert (pipeline.layout.train(1) / "config.json").is_file() and not partial.exists()
    assert pipeline.manifest.done("iter-1/train")
    # How often training checkpoints does not change results: it is not part of the run's config hash.
    changed = parse_config(
        {**tiny_config(tiny_model_dir), "training": {**tiny_config(tiny_model_dir)["training"], "save_steps": 7}}
    )
    assert config_hash(changed) == config_hash(config)
    assert pipeline.config.training.save_steps == 2
    off = {**tiny_config(tiny_model_dir)["training"], "save_steps": 0}
    args = training_arguments(
        parse_config({**tiny_config(tiny_model_dir), "training": off}), output_dir=tmp_path, max_steps=1
    )
    assert args.save_strategy == "no"


def test_killed_rank_under_zero3_resumes_to_the_single_process_weights(setup, uninterrupted):
    """The same kill and resume under DeepSpeed ZeRO-3 (CPU accelerator, gloo): the checkpoint is DeepSpeed's
    partitioned one (`global_step2/`), restored by the Trainer through DeepSpeed."""
    pytest.importorskip("deepspeed", reason="pip install 'sami[deepspeed]' (make install-test installs it)")
    out = setup["root"] / "killed-zero3"
    killed = run_two(setup, out, "--resume", kill_at=KILL_AT, config="zero3")
    assert killed.returncode != 0
    killed_state(out)
    assert (out / "checkpoint-2" / "global_step2").is_dir()
    ok(run_two(setup, out, "--resume", kill_at=SAVE_STEPS, config="zero3"))
    finished_state(out)
    assert (out / "training_args.bin").is_file()  # the DeepSpeed save path
    assert max_diff(weights(out), weights(uninterrupted)) < 1e-5
    resumed = step_logs(out)
    assert [h["step"] for h in resumed] == list(range(1, MAX_STEPS + 1))
    for a, b in zip(resumed, step_logs(uninterrupted), strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4 and a["num_tokens"] == b["num_tokens"]
        assert abs(a["learning_rate"] - b["learning_rate"]) < 1e-12


class _Interrupt(Exception):
    pass


def test_lora_training_interrupted_in_process_resumes_to_the_same_merged_weights(
    tmp_path, tiny_model_dir, monkeypatch
):
    """Under LoRA the checkpoint holds the adapter (and its optimizer); the resumed, merged export equals the
    uninterrupted one. The interruption here is an exception after step 3 (the files on disk are those a kill
    leaves: the kill itself is tested above)."""
    from transformers import TrainerCallback

    import sami.trainer
    from sami.models import LoraSettings
    from sami.sami_config import SAMIConfig
    from sami.trainer import train_sami

    samples = _samples(tmp_path / "samples.jsonl")

    def train(out: Path, *, resume: bool) -> Path:
        cfg = SAMIConfig(
            output_dir=str(out), per_device_train_batch_size=4, max_steps=MAX_STEPS, save_steps=SAVE_STEPS,
            learning_rate=1e-2, lr_scheduler_type="linear", seed=0, use_cpu=True, disable_tqdm=True,
        )  # fmt: skip
        return train_sami(tiny_model_dir, samples, out, cfg, lora=LoraSettings(r=4), resume=resume)

    reference = train(tmp_path / "reference", resume=False)

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == KILL_AT:
                raise _Interrupt

    init = sami.trainer.SAMITrainer.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(StopAt())

    monkeypatch.setattr(sami.trainer.SAMITrainer, "__init__", patched)
    out = tmp_path / "interrupted"
    with pytest.raises(_Interrupt):
        train(out, resume=True)
    assert (
        last_checkpoint(out) == out / "checkpoint-2" and (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    )
    monkeypatch.setattr(sami.trainer.SAMITrainer, "__init__", init)
    train(out, resume=True)
    finished_state(out)
    assert not (out / "adapter_config.json").exists()  # merged into a plain model folder
    assert max_diff(weights(out), weights(reference)) < 1e-5
    assert max_diff(weights(reference), weights(Path(tiny_model_dir))) > 1e-4
    assert step_logs(out) == step_logs(reference)


def test_sami_run_killed_mid_training_resumes_the_stage(setup, tmp_path, tiny_model_dir):
    """`sami run` (local launcher) killed with SIGKILL after step 3 of a 5-step training stage: the rerun keeps
    `train.partial/checkpoint-2`, finishes the stage from there and ends with the uninterrupted run's files."""
    cfg = tiny_config(tiny_model_dir)
    cfg["iterations"] = {"count": 1, "steps": [MAX_STEPS]}
    cfg["data"]["train_per_iteration"] = 2  # 4 queries: one epoch per step of 4
    cfg["training"] = {**cfg["training"], "per_device_train_batch_size": 4, "save_steps": SAVE_STEPS}
    config = write_config(tmp_path / "cfg.yaml", cfg)

    def run(out: Path, kill_at: int | None = None) -> subprocess.CompletedProcess:
        entry = [str(setup["killer"])] if kill_at is not None else ["-m", "sami.cli"]
        kill = {"SAMI_TEST_KILL_AT_STEP": str(kill_at)} if kill_at is not None else {}
        cmd = [sys.executable, *entry, "run", str(config), "--output-dir", str(out)]
        return subprocess.run(cmd, env=env(**kill), capture_output=True, text=True, timeout=600)

    ok(run(tmp_path / "reference"))
    out = tmp_path / "killed"
    assert run(out, kill_at=KILL_AT).returncode == -9
    partial = out / "iter-1" / "train.partial"
    assert last_checkpoint(partial) == partial / "checkpoint-2"
    ok(run(out, kill_at=SAVE_STEPS))  # survives only if the stage resumed after step 2
    train, ref = out / "iter-1" / "train", tmp_path / "reference" / "iter-1" / "train"
    finished_state(train)
    assert not partial.exists()
    assert max_diff(weights(train), weights(ref)) < 1e-5
    assert step_logs(train) == step_logs(ref)
    metrics = [json.loads((r / "iter-1" / "eval" / "metrics.json").read_text()) for r in (out, tmp_path / "reference")]
    assert abs(metrics[0]["mi"] - metrics[1]["mi"]) < 1e-6


def test_killed_rank_under_fsdp2_resumes_from_per_rank_shards(setup, uninterrupted):
    """The shipped `fsdp.yaml` (FSDP2, `SHARDED_STATE_DICT`) on 2 CPU ranks: `checkpoint-2` holds each rank's own
    shards of the weights and optimizer (torch.distributed.checkpoint, no gathered file); rank 1 killed after step 3,
    the resumed run ends with the one-process weights, exported as one full safetensors folder with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = setup["root"] / "killed-fsdp"
    killed = run_fsdp(setup, out, "--resume", kill_at=KILL_AT)
    assert killed.returncode != 0
    killed_state(out)
    checkpoint = out / "checkpoint-2"
    full = sum(t.numel() * t.element_size() for t in weights(uninterrupted).values())
    for name in ("pytorch_model_fsdp_0", "optimizer_0"):  # accelerate's save_fsdp_model / save_fsdp_optimizer
        shards = sorted((checkpoint / name).glob("*.distcp"))
        assert [p.name for p in shards] == ["__0_0.distcp", "__1_0.distcp"] and (
            checkpoint / name / ".metadata"
        ).is_file()
        sizes = [p.stat().st_size for p in shards]
        assert all(0.3 < s / sum(sizes) < 0.7 for s in sizes), sizes  # half each, not one rank with everything
    assert sum(p.stat().st_size for p in (checkpoint / "optimizer_0").glob("*.distcp")) > 1.9 * full  # AdamW moments
    gathered = ("model.safetensors", "pytorch_model_fsdp.bin", "optimizer.pt", "optimizer.bin")
    assert not [n for n in gathered if (checkpoint / n).exists()]
    ok(run_fsdp(setup, out, "--resume", kill_at=SAVE_STEPS))  # survives only if it resumed after step 2
    finished_state(out)
    assert json.loads((out / "train_info.json").read_text())["distributed_type"] == "DistributedType.FSDP"
    assert max_diff(weights(out), weights(uninterrupted)) < 1e-5
    resumed = step_logs(out)
    assert [h["step"] for h in resumed] == list(range(1, MAX_STEPS + 1))
    for a, b in zip(resumed, step_logs(uninterrupted), strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-4 and a["num_tokens"] == b["num_tokens"]
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert model.dtype == torch.float32 and AutoTokenizer.from_pretrained(out).encode("hello")


def test_fsdp2_bf16_training_exports_bf16(setup):
    """accelerate's `mixed_precision: bf16` (the shipped fsdp.yaml's, without the Trainer's `--bf16`): the export
    gathered from the FSDP2 shards is bfloat16 and loads with transformers in bfloat16."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = setup["root"] / "fsdp-bf16"
    ok(run_fsdp(setup, out, "--max-steps", "1", precision="bf16"))
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    assert AutoModelForCausalLM.from_pretrained(out, dtype="auto").dtype == torch.bfloat16
    assert (out / "tokenizer.json").is_file() and (out / "log_history.json").is_file()
