"""`sami run` end to end on a tiny random model: files, resume after interruptions, config errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from sami.cli import main
from sami.io import read_jsonl

EVAL = ["responses", "judgments", "metrics"]
STAGES = ["constitutions", "iter-0/responses", "iter-0/metrics"]  # no baselines at iteration 0: no judgments
STAGES += [f"iter-{t}/{s}" for t in (1, 2) for s in ["samples", "train", *EVAL]] + ["report"]


def tiny_config(model_dir: Path, **overrides) -> dict:
    """Two iterations on a handful of real HH-RLHF queries; filters off (a random model writes anything)."""
    config = {
        "name": "tiny",
        "seed": 0,
        "model": {"policy": str(model_dir)},
        "constitutions": "hh_opus",
        "sampling": {"scheme": "paper-dialogue", "n_constitutions": 2, "max_new_tokens": 6, "chunk_size": 2},
        "prompts": {"task": "dialogue", "style": "base"},
        "filters": {"leftovers": [], "refusal_prefixes": [], "drop_identical": False},
        "data": {
            "train": [
                {"bundled": "hh_helpful_train", "subset": "helpful", "limit": 8},
                {"bundled": "hh_harmless_train", "subset": "harmless", "limit": 8},
            ],
            "eval": [{"bundled": "hh_helpful_test", "subset": "helpful", "limit": 3}],
            "train_per_iteration": 3,
        },
        "generation": {"backend": "hf", "batch_size": 8},
        "training": {"learning_rate": 1e-3, "per_device_train_batch_size": 2, "report_to": []},
        "iterations": {"count": 2, "steps": [1, 2]},
        "evaluation": {"judge": {"kind": "local", "model": str(model_dir)}, "max_new_tokens": 6},
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def outputs(run_dir: Path) -> dict:
    """What a run produced, in a form that two runs with the same seed must share."""
    result = {}
    for t in (1, 2):
        samples = read_jsonl(run_dir / f"iter-{t}" / "samples.jsonl")
        result[f"samples-{t}"] = sorted((r["id"], tuple(r["responses"])) for r in samples)
    for t in (0, 1, 2):
        metrics = json.loads((run_dir / f"iter-{t}" / "eval" / "metrics.json").read_text())
        result[f"metrics-{t}"] = {k: metrics[k] for k in ("mi", "mi_bound", "mean_length")}
        result[f"wins-{t}"] = {k: v.get("win_rate") for k, v in metrics["win_rates"].items()}
    return result


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_model_dir) -> Path:
    """One uninterrupted run, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("reference") / "run"
    cfg = write_config(out.parent / "cfg.yaml", tiny_config(tiny_model_dir))
    assert main(["run", str(cfg), "--output-dir", str(out)]) == 0
    return out


def test_end_to_end_writes_every_file(reference_run):
    run = reference_run
    for name in ("config.yaml", "manifest.json", "constitutions.json", "report/index.html", "report/summary.json"):
        assert (run / name).is_file(), name
    for t in (1, 2):
        assert (run / f"iter-{t}" / "samples.jsonl").is_file()
        stats = json.loads((run / f"iter-{t}" / "samples.stats.json").read_text())
        assert stats["seed"] == t  # run seed 0 + t: each iteration draws its own constitutions and samples
        assert (run / f"iter-{t}" / "train" / "config.json").is_file()
        assert (run / f"iter-{t}" / "train" / "log_history.json").is_file()
        assert (run / f"iter-{t}" / "eval" / "judgments-base.jsonl").is_file()
    assert not list(run.glob("iter-*/train.partial"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"]) == STAGES
    summary = json.loads((run / "report" / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [0, 1, 2]
    for it in summary["iterations"]:
        assert isinstance(it["mi"], float) and isinstance(it["mi_bound"], float)
        assert set(it["mean_length"]) >= {"positive", "negative"}
    assert summary["iterations"][0]["win_rates"] == {}
    for it in summary["iterations"][1:]:
        assert 0.0 <= it["win_rates"]["base"]["win_rate"] <= 1.0
        assert it["win_rates"]["base"]["n"] == 3
    assert summary["config"]["model"]["policy"]
    # Iteration t trains on its own slice: the two halves of each source never overlap.
    ids = [{r["id"] for r in read_jsonl(run / f"iter-{t}" / "samples.jsonl")} for t in (1, 2)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]


def test_rerun_of_a_finished_run_redoes_nothing(reference_run, monkeypatch):
    import sami.stage_runs

    def fail(*args, **kwargs):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(sami.stage_runs, "train_from_config", fail)
    before = outputs(reference_run)
    cfg = reference_run.parent / "cfg.yaml"
    assert main(["run", str(cfg), "--output-dir", str(reference_run)]) == 0
    assert outputs(reference_run) == before


def test_interrupted_at_a_stage_boundary_resumes_to_the_same_result(tmp_path, tiny_model_dir, reference_run):
    import sami.pipeline

    out = tmp_path / "run"
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tiny_model_dir))
    original = sami.pipeline.Pipeline.run_stage

    def interrupt_second_training(self, stage):
        if stage.name == "iter-2/train":
            raise KeyboardInterrupt
        return original(self, stage)

    sami.pipeline.Pipeline.run_stage = interrupt_second_training
    try:
        assert main(["run", str(cfg), "--output-dir", str(out)]) == 130
    finally:
        sami.pipeline.Pipeline.run_stage = original
    manifest = json.loads((out / "manifest.json").read_text())
    assert "iter-2/samples" in manifest["stages"] and "iter-2/train" not in manifest["stages"]
    assert main(["run", str(cfg), "--output-dir", str(out)]) == 0
    assert outputs(out) == outputs(reference_run)


@pytest.mark.slow
def test_killed_mid_stage_resumes_without_duplicates(tmp_path, tiny_model_dir, reference_run):
    out = tmp_path / "run"
    config = tiny_config(tiny_model_dir)
    config["sampling"]["chunk_size"] = 1  # one query per write: many points to be killed at
    cfg = write_config(tmp_path / "cfg.yaml", config)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sami.cli", "run", str(cfg), "--output-dir", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples = out / "iter-1" / "samples.jsonl"
    deadline = time.time() + 240
    try:
        # Kill it (SIGKILL: no cleanup) as soon as the first chunk of iteration 1's samples is on disk.
        while time.time() < deadline and proc.poll() is None:
            if samples.exists() and samples.stat().st_size > 0:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    partial = read_jsonl(samples)
    assert 0 < len(partial) < 6
    assert main(["run", str(cfg), "--output-dir", str(out)]) == 0
    ids = [r["id"] for r in read_jsonl(samples)]
    assert len(ids) == len(set(ids)) == 6
    assert outputs(out) == outputs(reference_run)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c.update(colour="blue"), "colour: unknown key"),
        (
            lambda c: c["training"].update(learning_rate="fast"),
            'training.learning_rate: expected a number, got "fast"',
        ),
        (lambda c: c["sampling"].update(n_constitutions=1), "sampling.n_constitutions"),
        (lambda c: c["iterations"].update(count=3, steps=[1, 2]), "iterations: steps lists 2 values for 3 iterations"),
        (lambda c: c.update(constitutions="missing.json"), "constitutions"),
        (lambda c: c["data"]["train"].append({"path": "nowhere.jsonl"}), "data.train.2.path: file not found"),
        (lambda c: c["training"].update(trainer_args={"no_such_arg": 1}), "no_such_arg"),
    ],
)
def test_bad_config_exits_2_naming_the_field(tmp_path, tiny_model_dir, capsys, change, expected):
    config = tiny_config(tiny_model_dir)
    change(config)
    cfg = write_config(tmp_path / "cfg.yaml", config)
    assert main(["run", str(cfg), "--output-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_config_show_prints_the_resolved_demo(capsys):
    assert main(["config", "show"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["name"] == "demo"
    assert shown["training"]["max_grad_norm"] == 1.0  # a default filled in
    assert shown["iterations"]["count"] == 2


def test_changed_config_in_the_same_folder_reruns_what_it_changes(tmp_path, tiny_model_dir, capsys, reference_run):
    """Another seed changes every stage (constitutions depend on it): the dry run says so and writes nothing.
    (Before per-stage hashes such a folder was refused; tests/test_stage_hashes.py covers the cases in detail.)"""
    before = {p: p.read_bytes() for p in sorted(reference_run.rglob("*")) if p.is_file()}
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tiny_model_dir, seed=1))
    assert main(["run", str(cfg), "--output-dir", str(reference_run), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["run", name] for name in STAGES]
    assert "hash changed: seed" in lines[0]
    assert {p: p.read_bytes() for p in sorted(reference_run.rglob("*")) if p.is_file()} == before


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_are_valid_configs(recipe):
    from sami.run_config import parse_config

    config = parse_config(yaml.safe_load(recipe.read_text()), source=str(recipe))
    assert len(config.iterations.steps) >= config.iterations.count
    if recipe.name not in (
        "demo.yaml",
        "hh_tiny.yaml",
        "compare_dpo.yaml",
        "compare.yaml",
        "heldout_checks.yaml",
        "heldout_checks_heldout.yaml",
    ):
        assert config.iterations.count == 3 and config.sampling.n_constitutions == 2
        assert config.training.bf16 and config.launcher.kind == "accelerate"


def test_bundled_demo_is_the_configs_demo():
    from sami.run_config import default_config_path

    assert (ROOT / "configs" / "demo.yaml").read_text() == default_config_path().read_text()
