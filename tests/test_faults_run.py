"""Fault injection on whole tiny runs: edited inputs, damaged outputs, a judge server that fails, two writers at
once and kill -9 at stage boundaries (issue 30). Each asserts the exit code, the one-line message, that no file
outside the run folder changed and that nothing inside was lost.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, counting_post_server, send_json
from test_pipeline import outputs, tiny_config, write_config

from sami.cli import main
from sami.constitutions import bundled_constitution_path
from sami.data import bundled_queries_path
from sami.io import current_umask
from sami.runlock import LOCK_NAME


def tree(folder: Path, *, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file under `folder` (not under `skip`, not the lock file), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME and (skip is None or skip not in p.parents)
    }


def local_inputs(root: Path, model_dir: Path) -> dict:
    """The tiny config reading its constitution and evaluation queries from files of its own (to edit them)."""
    config = tiny_config(model_dir)
    shutil.copy(bundled_constitution_path("hh_opus"), root / "constitution.json")
    lines = bundled_queries_path("hh_helpful_test").read_text(encoding="utf-8").splitlines()[:3]
    (root / "eval.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config["constitutions"] = str(root / "constitution.json")
    config["data"]["eval"] = [{"path": str(root / "eval.jsonl"), "subset": "helpful"}]
    return config


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("faults")
    config = local_inputs(root, tiny_model_dir)
    assert main(["run", str(write_config(root / "cfg.yaml", config)), "--output-dir", str(root / "run")]) == 0
    return root, config


@pytest.fixture
def copy_of(finished, tmp_path) -> Iterator[tuple[Path, dict]]:
    """A copy of the finished run (`ROOT/run`, ROOT a new folder holding it) with the same config; the input files
    stay where they are (their paths are config values) and are put back after the test."""
    root, config = finished
    inputs = {p: p.read_bytes() for p in (root / "constitution.json", root / "eval.jsonl")}
    shutil.copytree(root / "run", tmp_path / "run", symlinks=True)
    yield tmp_path, copy.deepcopy(config)
    for path, data in inputs.items():
        path.write_bytes(data)


def plan(root: Path, config: dict, capsys) -> dict[str, tuple[str, str]]:
    capsys.readouterr()
    before = tree(root / "run")
    assert (
        main(["run", str(write_config(root / "cfg.yaml", config)), "--output-dir", str(root / "run"), "--dry-run"])
        == 0
    )
    assert tree(root / "run") == before
    out = {}
    for line in capsys.readouterr().out.splitlines():
        verdict, name, reason = line.split(None, 2)
        out[name] = (verdict, reason)
    return out


def rerun(root: Path, config: dict) -> int:
    return main(["run", str(write_config(root / "cfg.yaml", config)), "--output-dir", str(root / "run")])


def ran(p: dict) -> list[str]:
    return [name for name, (verdict, _) in p.items() if verdict == "run"]


def test_editing_the_eval_queries_reruns_exactly_the_stages_that_read_them(copy_of, capsys):
    root, config = copy_of
    path = Path(config["data"]["eval"][0]["path"])
    path.write_text(path.read_text().replace("?", "??", 1))
    p = plan(root, config, capsys)
    assert [n for n in ran(p) if n.endswith(("samples", "train"))] == []
    assert {"iter-0/responses", "iter-1/responses", "iter-2/responses", "report"} <= set(ran(p))
    assert p["iter-0/responses"][1] == f"file changed: {path}"
    assert p["constitutions"] == ("skip", "done")


def test_editing_the_constitution_in_place_reruns_from_the_constitutions(copy_of, capsys):
    root, config = copy_of
    path = Path(config["constitutions"])
    path.write_text(path.read_text().replace("helpful", "very helpful", 1))
    p = plan(root, config, capsys)
    assert p["constitutions"] == ("run", f"file changed: {path}")
    assert all(v == "run" for v, _ in p.values())


@pytest.mark.parametrize(
    "damage, stage",
    [
        (lambda run: _truncate(run / "iter-1" / "samples.jsonl"), "iter-1/samples"),
        (lambda run: (run / "iter-1" / "train" / "model.safetensors").unlink(), "iter-1/train"),
        (lambda run: (run / "iter-2" / "eval" / "metrics.json").write_text("{}"), "iter-2/metrics"),
    ],
    ids=["truncated-samples", "deleted-weights", "overwritten-metrics"],
)
def test_a_damaged_output_reruns_its_stage_and_is_restored(copy_of, capsys, damage, stage):
    root, config = copy_of
    run = root / "run"
    original, results = tree(run), outputs(run)
    damage(run)
    p = plan(root, config, capsys)
    outside = tree(root, skip=run)  # the config file plan() wrote, nothing else
    assert p[stage][0] == "run" and p[stage][1].startswith("output damaged:"), p[stage]
    assert ran(p)[0] == stage
    assert rerun(root, config) == 0
    restored = tree(run)
    for name in ("iter-1/samples.jsonl", "iter-1/train/model.safetensors"):
        assert restored[name] == original[name], name
    assert outputs(run) == results  # metrics.json also holds timings: compared by its numbers
    assert tree(root, skip=run) == outside


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---- a judge server that fails, then recovers ---------------------------------------------------------------------
def judge_server(state: dict):
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        if state["fail"]:
            send_json(handler, 500, b'{"error": {"message": "down"}}')
            return
        body = {"id": "x", "object": "chat.completion", "created": 0, "model": "judge"}
        body["choices"] = [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "A"}}]
        send_json(handler, 200, json.dumps(body).encode())

    return counting_post_server(state, answer)


def test_failed_judgments_fail_the_run_and_a_rerun_retries_only_them(tmp_path, tiny_model_dir, capsys):
    config = tiny_config(tiny_model_dir, iterations={"count": 1, "steps": [1]})
    state = {"fail": True, "requests": 0}
    with judge_server(state) as url:
        judge = {"kind": "api", "base_url": url, "model_name": "judge", "max_retries": 0}
        config["evaluation"]["judge"] = judge
        capsys.readouterr()
        assert rerun(tmp_path, config) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("sami run: incomplete: iter-1/judgments: 3 failed"), err[-1]
        summary = json.loads((tmp_path / "run" / "report" / "summary.json").read_text())
        assert summary["incomplete"] == {"iter-1/judgments": "3 failed"}
        for page in ("index.html", "summary.md"):
            assert "iter-1/judgments: 3 failed" in (tmp_path / "run" / "report" / page).read_text()
        judged = tmp_path / "run" / "iter-1" / "eval" / "judgments-base.jsonl"
        samples = (tmp_path / "run" / "iter-1" / "samples.jsonl").read_bytes()

        state.update(fail=False, requests=0)
        p = plan(tmp_path, config, capsys)
        assert p["iter-1/judgments"] == ("run", "incomplete: 3 failed, retried")
        assert ran(p) == ["iter-1/judgments", "iter-1/metrics", "report"]
        assert rerun(tmp_path, config) == 0
        assert state["requests"] == 3  # the failed verdicts only
        records = [json.loads(line) for line in judged.read_text().splitlines()]
        assert len(records) == 3 and {r["status"] for r in records} == {"ok"}
        assert (tmp_path / "run" / "iter-1" / "samples.jsonl").read_bytes() == samples
        assert "incomplete" not in json.loads((tmp_path / "run" / "report" / "summary.json").read_text())
        state["requests"] = 0
        assert rerun(tmp_path, config) == 0 and state["requests"] == 0


# ---- other processes: two writers, kill -9 --------------------------------------------------------------------
KILLER = """
import os, signal, sys

import sami.manifest

STAGE = os.environ["SAMI_TEST_KILL_AFTER"]
finish = sami.manifest.Manifest.finish


def finish_then_die(self, stage, *args, **kwargs):
    finish(self, stage, *args, **kwargs)
    if stage == STAGE:
        os.kill(os.getpid(), signal.SIGKILL)


sami.manifest.Manifest.finish = finish_then_die
from sami.cli import main

sys.exit(main(sys.argv[1:]))
"""


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_two_runs_into_one_folder_one_is_refused(tmp_path, tiny_model_dir):
    cfg = write_config(tmp_path / "cfg.yaml", tiny_config(tiny_model_dir, iterations={"count": 1, "steps": [1]}))
    cmd = [sys.executable, "-m", "sami.cli", "run", str(cfg), "--output-dir", str(tmp_path / "run")]
    procs = [subprocess.Popen(cmd, env=env(), stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=600), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [0, 2], results
    refused = results[1][1].strip().splitlines()
    assert len(refused) == 1 and "in use by sami (pid " in refused[0]
    assert rerun(tmp_path, tiny_config(tiny_model_dir, iterations={"count": 1, "steps": [1]})) == 0


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["iter-1/samples", "iter-1/train", "iter-2/judgments"])
def test_kill_9_at_a_stage_boundary_then_rerun_gives_the_uninterrupted_run(tmp_path, finished, stage):
    root, config = finished
    config = copy.deepcopy(config)
    cfg = write_config(tmp_path / "cfg.yaml", config)
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    outside = tree(tmp_path)
    args = ["run", str(cfg), "--output-dir", str(tmp_path / "run")]
    proc = subprocess.run([sys.executable, str(killer), *args], env=env(SAMI_TEST_KILL_AFTER=stage), timeout=600)
    assert proc.returncode == -9
    proc = subprocess.run(
        [sys.executable, "-m", "sami.cli", *args], env=env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert outputs(tmp_path / "run") == outputs(root / "run")
    assert tree(tmp_path, skip=tmp_path / "run") == outside
    assert not list((tmp_path / "run").rglob(".*.tmp"))


def test_every_file_of_a_run_has_the_umask_mode(finished):
    """Weights, manifest, config, report: readable by a team as the umask says, like the tokenizer files."""
    root, _ = finished
    want = 0o666 & ~current_umask()
    modes = {str(p.relative_to(root)): oct(p.stat().st_mode & 0o777) for p in (root / "run").rglob("*") if p.is_file()}
    assert {k: v for k, v in modes.items() if v != oct(want)} == {}
    assert "run/iter-1/train/model.safetensors" in modes
