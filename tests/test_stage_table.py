"""The stage table (`sami.stages`): a stage declared once appears everywhere, and model stages run in processes
of their own (`launcher.isolation: process`) with the same results as in the driver."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from test_pipeline import STAGES, reference_run, tiny_config, write_config  # noqa: F401 - reference_run: fixture

import sami.models
import sami.stages
from sami.cli import main
from sami.errors import SamiInputError
from sami.launch import run_launched
from sami.stage import Stage

MODEL_STAGES = [s for s in STAGES if s.split("/")[-1] in ("samples", "train", "responses", "judgments")]


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())["stages"]


def test_a_stage_added_to_the_table_is_in_the_dry_run_the_manifest_and_sami_stage(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    """One record added in `stage_table` (here by wrapping it): `--dry-run` lists it, `sami run` runs it and the
    manifest records it with its output, `sami stage NAME` runs it alone, `sami stage --list` names it."""
    ran = []
    real = sami.stages.stage_table

    def note(ctx):
        ran.append(ctx.run_dir)
        (ctx.run_dir / "note.txt").write_text("noted")

    def with_note(config, **kwargs):
        table = real(config, **kwargs)
        extra = Stage(
            "iter-0/note", {"seed": config.seed}, ("iter-0/metrics",), note, lambda c: [c.run_dir / "note.txt"]
        )
        names = list(table)
        at = names.index("report")
        return {**{n: table[n] for n in names[:at]}, extra.name: extra, "report": table["report"]}

    monkeypatch.setattr(sami.stages, "stage_table", with_note)
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tiny_model_dir, iterations={"count": 1, "steps": [1]}))
    run = tmp_path / "run"
    assert main(["run", str(cfg), "--output-dir", str(run), "--dry-run"]) == 0
    assert "iter-0/note" in capsys.readouterr().out
    assert main(["run", str(cfg), "--output-dir", str(run)]) == 0
    assert manifest(run)["iter-0/note"]["outputs"] == ["note.txt"] and len(ran) == 1
    assert main(["stage", "--list", "--run-dir", str(run)]) == 0
    assert "iter-0/note" in capsys.readouterr().out.splitlines()
    assert main(["stage", "iter-0/note", "--run-dir", str(run)]) == 0
    assert len(ran) == 2
    assert main(["stage", "iter-9/none", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no stage 'iter-9/none'" in err and "iter-0/note" in err


def test_model_stages_run_in_processes_of_their_own_with_the_driver_s_results(
    tmp_path,
    tiny_model_dir,
    reference_run,  # noqa: F811 - the fixture imported above
    monkeypatch,
):
    """`launcher.isolation: process`: every stage that loads a model ran under another pid (recorded in the
    manifest), the driver loaded no model at all, and the run's files are those of the in-driver run."""
    loaded = []
    monkeypatch.setattr(sami.models, "load_model", lambda *a, **k: loaded.append(a) or pytest.fail("driver model"))
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tiny_model_dir, launcher={"isolation": "process"}))
    run = tmp_path / "run"
    assert main(["run", str(cfg), "--output-dir", str(run)]) == 0
    stages = manifest(run)
    assert list(stages) == STAGES
    for name in MODEL_STAGES:
        assert stages[name]["where"] == "process" and stages[name]["pid"] != os.getpid(), name
    for name in set(STAGES) - set(MODEL_STAGES):
        assert stages[name]["where"] == "driver" and stages[name]["pid"] == os.getpid(), name
    assert len({stages[n]["pid"] for n in MODEL_STAGES}) == len(MODEL_STAGES)  # one process per stage
    assert all(stages[n]["seconds"] > 0 for n in STAGES)  # each stage's wall time, its process's start included
    assert loaded == []
    ours = json.loads((run / "report" / "summary.json").read_text())
    theirs = json.loads((reference_run / "report" / "summary.json").read_text())
    assert ours["iterations"] == theirs["iterations"]


def test_a_child_s_input_error_is_one_line_in_the_driver(tmp_path, tiny_model_dir, capfd):
    """A child stage process that fails on its input (exit 2) hands its one-line message to the driver, which
    raises it; the child prints nothing of it itself."""
    run = tmp_path / "run"
    run.mkdir()
    write_config(run / "config.yaml", tiny_config(tiny_model_dir))
    cmd = [sys.executable, "-m", "sami.cli", "stage", "iter-7/train", "--run-dir", str(run)]
    with pytest.raises(SamiInputError, match=r"^no stage 'iter-7/train' in this run; its stages: constitutions"):
        run_launched(cmd, what="iter-7/train")
    assert "error" not in capfd.readouterr().err


def test_a_plain_child_keeps_every_core(monkeypatch):
    """Only an `accelerate launch` gets the one-thread-per-rank CPU environment; a child stage process (one per
    machine) keeps torch's own thread count."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    probe = "import os, sys; sys.exit(3 if {'OMP_NUM_THREADS', 'ACCELERATE_USE_CPU'} & set(os.environ) else 0)"
    assert run_launched([sys.executable, "-c", probe], what="probe") > 0


def test_a_failed_launch_is_named_so_the_suite_can_retry_a_gloo_abort():
    """pyproject's rerun rule matches "accelerate launch exited with status": a failed launch says so; a failed
    plain child says "its process"."""
    fail = [sys.executable, "-c", "import sys; sys.exit(1)"]
    with pytest.raises(RuntimeError, match="^x: accelerate launch exited with status 1$"):
        run_launched([*fail, "accelerate.commands.launch"], what="x")  # the name is all that marks a launch here
    with pytest.raises(RuntimeError, match="^y: its process exited with status 1$"):
        run_launched(fail, what="y")
