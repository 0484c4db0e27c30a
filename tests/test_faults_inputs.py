"""Fault injection, inputs and environment: every bad input or broken machine is one line, exit 2, before any work,
with no file outside the run folder changed and nothing inside it lost (issue 30).

Each case runs `sami run` (in process) on the tiny model's config with one thing broken and asserts the exit code,
that stderr is one line naming the file or field, and that the folder it would write stays as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from test_pipeline import tiny_config, write_config

import sami.io
from sami.cli import main
from sami.constitutions import bundled_constitution_path
from sami.io import atomic_write_text
from sami.runlock import LOCK_NAME, run_lock

SECRET = "sk-proj-0123456789abcdef"


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 and mode of every file under `folder` (not the lock file, which a refused writer may create)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.name != LOCK_NAME:
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
    return out


def cli(args: list[str], capsys) -> tuple[int, str]:
    """`sami ARGS` in this process: (exit code, stderr)."""
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def one_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def case(tmp_path, tiny_model_dir):
    """A config dict and a runner: run(config) -> (code, stderr), asserting nothing under tmp_path but the
    config file changed (the run folder is never created by a refused run)."""

    def run(config: dict, *extra: str, capsys, config_path: Path | None = None) -> tuple[int, str]:
        path = config_path or write_config(tmp_path / "cfg.yaml", config)
        before = snapshot(tmp_path)
        code, err = cli(["run", str(path), "--output-dir", str(tmp_path / "run"), *extra], capsys)
        assert snapshot(tmp_path) == before
        assert not (tmp_path / "run").exists() or code == 0
        return code, err

    return tiny_config(tiny_model_dir), run


@pytest.mark.parametrize(
    "change, needles",
    [
        (lambda c: c.update(seed=1e25), ["seed"]),
        (lambda c: c.update(seed=-3), ["seed"]),
        (lambda c: c["training"].update(learning_rate=-1e-3), ["training.learning_rate", "greater than 0"]),
        (lambda c: c["training"].update(learning_rate=float("nan")), ["training.learning_rate", "finite"]),
        (lambda c: c["training"].update(save_steps=3, trainer_args={"save_steps": 5}), ["trainer_args", "save_steps"]),
        (lambda c: c["training"].update(trainer_args={"max_steps": 5}), ["trainer_args", "iterations.steps"]),
        (
            lambda c: c.update(comparisons={"dpo": {"trainer_args": {"save_steps": 5}}}),
            ["comparisons.dpo.trainer_args", "'save_steps' is set by training.save_steps"],
        ),
        (lambda c: c["sampling"].update(n_constitutions=9), ["sampling.n_constitutions", "9"]),
        (lambda c: c["evaluation"].update(judge={"kind": "api", "api_key_env": SECRET}), ["judge.api_key_env"]),
        (lambda c: c["generation"].update(backend="openai", api_key_env=SECRET), ["generation.api_key_env"]),
        # a field of another backend or judge kind is refused, not ignored
        (lambda c: c["generation"].update(backend="openai", batch_size=4), ["generation.batch_size", "backend hf"]),
        (lambda c: c["evaluation"]["judge"].update(kind="api"), ["evaluation.judge.model", "kind local only"]),
    ],
    ids=[
        "seed-1e25",
        "seed-negative",
        "lr-negative",
        "lr-nan",
        "knob-twice",
        "max-steps-in-args",
        "dpo-knob-twice",
        "C-too-big",
        "judge-key",
        "generation-key",
        "generation-field-of-other-backend",
        "judge-field-of-other-kind",
    ],
)
def test_bad_config_values_are_one_line_before_any_work(case, capsys, change, needles):
    config, run = case
    change(config)
    code, err = run(config, capsys=capsys)
    assert code == 2
    one_line(err, *needles)
    assert SECRET not in err


def test_duplicate_yaml_key_names_both_lines(case, tmp_path, capsys):
    config, run = case
    text = yaml.safe_dump(config) + "seed: 3\n"
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    code, err = run(config, capsys=capsys, config_path=path)
    assert code == 2
    one_line(err, str(path), "'seed' given twice")


@pytest.mark.parametrize("where", ["config", "queries", "constitution"])
def test_non_utf8_files_are_named(case, tmp_path, capsys, where):
    config, run = case
    bad = tmp_path / "bad"
    if where == "queries":
        bad = bad.with_suffix(".jsonl")
        bad.write_bytes(b'{"id": "q1", "query": "hello"}\n{"id": "q2", "query": "caf\xe9"}\n')
        config["data"]["eval"] = [{"path": str(bad)}]
    elif where == "constitution":
        bad = bad.with_suffix(".json")
        bad.write_bytes(bundled_constitution_path("hh_opus").read_bytes().replace(b"helpful", b"h\xffelpful", 1))
        config["constitutions"] = str(bad)
    path = write_config(tmp_path / "cfg.yaml", config)
    if where == "config":
        path.write_bytes(path.read_bytes() + b"# \xff\xfe\n")
    code, err = run(config, capsys=capsys, config_path=path)
    assert code == 2
    one_line(err, "not UTF-8")
    assert str(path if where == "config" else bad) in err


def test_fake_gguf_is_refused(case, tmp_path, capsys):
    config, run = case
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    config["model"]["policy"] = str(fake)
    code, err = run(config, capsys=capsys)
    assert code == 2
    one_line(err, "model.policy", "not a GGUF file")


def test_a_query_longer_than_the_context_is_refused(case, tmp_path, capsys, tiny_model_dir):
    config, run = case
    context = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    queries = tmp_path / "long.jsonl"
    queries.write_text(json.dumps({"id": "long", "query": "word " * (context + 10)}) + "\n")
    config["data"]["eval"] = [{"path": str(queries)}]
    code, err = run(config, capsys=capsys)
    assert code == 2
    one_line(err, "data.eval.0", "'long'", "context")


def test_output_dir_that_is_a_file(case, tmp_path, capsys):
    config, _ = case
    target = tmp_path / "a-file"
    target.write_text("mine")
    code, err = cli(["run", str(write_config(tmp_path / "cfg.yaml", config)), "--output-dir", str(target)], capsys)
    assert code == 2
    one_line(err, str(target), "not a folder")
    assert target.read_text() == "mine"


def test_restart_refuses_a_folder_that_is_not_a_run(case, tmp_path, capsys):
    config, _ = case
    folder = tmp_path / "thesis"
    (folder / "code").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\documentclass{article}")
    (folder / "code" / "main.py").write_text("print(1)")
    before = snapshot(folder)
    cfg = write_config(tmp_path / "cfg.yaml", config)
    for extra in ([], ["--dry-run"]):
        code, err = cli(["run", str(cfg), "--output-dir", str(folder), "--restart", *extra], capsys)
        assert code == 2
        one_line(err, str(folder), "--restart empties only a sami run folder")
        assert snapshot(folder) == before


def test_manifest_of_the_wrong_shape_is_one_line(case, tmp_path, capsys):
    config, _ = case
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = write_config(tmp_path / "cfg.yaml", config)
    for text, needle in [
        ('{"version": 3, "stages": {"iter-1/train": "done"}}', "stages.iter-1/train: expected a mapping"),
        ('{"version": 3, "stages": {"report": {"outputs": "report"}}}', "stages.report.outputs"),
        ('{"version": 3, "stages": []}', "not a manifest"),
    ]:
        (run_dir / "manifest.json").write_text(text)
        before = snapshot(run_dir)
        code, err = cli(["run", str(cfg), "--output-dir", str(run_dir)], capsys)
        assert code == 2
        one_line(err, "manifest.json", needle)
        assert snapshot(run_dir) == before
    (run_dir / "manifest.json").write_bytes(b'{"version": 3, "stages": {"\xff": {}}}')
    code, err = cli(["run", str(cfg), "--output-dir", str(run_dir), "--dry-run"], capsys)
    assert code == 2
    one_line(err, "manifest.json:1", "not UTF-8")


@pytest.mark.parametrize("code_", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES], ids=errno.errorcode.get)
def test_disk_full_is_one_line_and_leaves_nothing_half_written(case, tmp_path, capsys, monkeypatch, code_):
    """A write failing as on a full disk, a quota, a read-only mount or a foreign folder (also as root)."""
    config, _ = case
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    real = os.fsync

    def full(fd):
        raise OSError(code_, os.strerror(code_))

    monkeypatch.setattr(sami.io.os, "fsync", full)
    code, err = cli(["run", str(write_config(tmp_path / "cfg.yaml", config)), "--output-dir", str(run_dir)], capsys)
    monkeypatch.setattr(sami.io.os, "fsync", real)
    assert code == 2
    one_line(err, os.strerror(code_), f"{run_dir / 'manifest.json'}: ")
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "manifest.json").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_line(case, tmp_path, capsys):
    config, _ = case
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        cfg = write_config(tmp_path / "cfg.yaml", config)
        code, err = cli(["run", str(cfg), "--output-dir", str(parent / "run")], capsys)
    finally:
        parent.chmod(0o755)
    assert code == 2
    one_line(err, "Permission denied")


# ---- the lock ------------------------------------------------------------------------------------------------
HOLDER = """
import sys, time
from sami.runlock import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def hold(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_kill_9_frees_the_lock(case, tmp_path, capsys):
    config, _ = case
    run_dir = tmp_path / "run"
    holder = hold(run_dir)
    try:
        cfg = write_config(tmp_path / "cfg.yaml", config)
        before = snapshot(run_dir)
        for command in (
            ["run", str(cfg), "--output-dir", str(run_dir)],
            ["stage", "train", "--run-dir", str(run_dir), "--iteration", "1"],
        ):
            code, err = cli(command, capsys)
            assert code == 2
            one_line(err, str(run_dir), f"pid {holder.pid}", "--wait")
        assert snapshot(run_dir) == before
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
        holder.wait()
    with run_lock(run_dir):  # free again at once, no stale lock
        assert (run_dir / LOCK_NAME).read_text().strip() == str(os.getpid())


def test_wait_queues_behind_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold(run_dir)
    started = time.monotonic()
    import threading

    threading.Timer(1.0, holder.kill).start()
    with run_lock(run_dir, wait=True):
        assert time.monotonic() - started >= 0.9
    holder.wait()


def test_stale_temporaries_are_removed_under_the_lock(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "iter-1").mkdir(parents=True)
    stale = run_dir / "iter-1" / ".samples.stats.json.abc123.tmp"
    stale.write_text("{")
    keep = run_dir / "iter-1" / "notes.tmp"  # not ours: no leading dot
    keep.write_text("mine")
    with run_lock(run_dir):
        pass
    assert not stale.exists() and keep.read_text() == "mine"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o007, 0o660), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "f.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == mode


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--samples", "s.jsonl", "--output-dir", "out", "--max-steps", "0"], "--max-steps"),
        (["evaluate", "--model", "m", "--baseline", "a=x", "--baseline", "a=y", "--out", "o"], "'a' given twice"),
        (["principles", "write", "--task", "t", "--principle", "p", "--out", "."], "is a folder"),
    ],
    ids=["max-steps-0", "baseline-twice", "principles-out-dir"],
)
def test_command_line_mistakes_are_one_line_before_work(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    code, err = cli(args, capsys)
    assert code == 2
    one_line(err, needle)
    assert snapshot(tmp_path) == before


CHILD = """
import sys
from sami.runlock import run_lock
with run_lock(sys.argv[1]):
    print("worked", flush=True)
"""


def test_children_of_the_holder_work_under_its_lock_and_strangers_do_not(tmp_path):
    """What `accelerate launch ... sami stage` does under `sami run`: the child inherits SAMI_RUN_LOCK."""
    run_dir = tmp_path / "run"
    with run_lock(run_dir):
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}  # as run_launched builds it, under the lock
        child = subprocess.run([sys.executable, "-c", CHILD, str(run_dir)], env=env, capture_output=True, text=True)
        assert child.returncode == 0 and child.stdout.strip() == "worked", child.stderr
        stranger_env = {k: v for k, v in env.items() if k != "SAMI_RUN_LOCK"}
        stranger = subprocess.run(
            [sys.executable, "-c", CHILD, str(run_dir)], env=stranger_env, capture_output=True, text=True
        )
        assert stranger.returncode != 0 and f"in use by sami (pid {os.getpid()})" in stranger.stderr
    assert "SAMI_RUN_LOCK" not in os.environ
    # a leftover variable naming a holder that is gone does not let anyone in unlocked: it locks as usual
    stale = {**env, "SAMI_RUN_LOCK": f"{os.getpid()}:{os.path.realpath(run_dir)}"}
    holder = hold(run_dir)
    try:
        late = subprocess.run([sys.executable, "-c", CHILD, str(run_dir)], env=stale, capture_output=True, text=True)
        assert late.returncode != 0 and f"pid {holder.pid}" in late.stderr
    finally:
        holder.kill()
        holder.wait()


def test_not_utf8_names_the_line_in_jsonl_and_text_files(tmp_path):
    data = b'{"id": "q1", "query": "hello"}\n{"id": "q2", "query": "caf\xe9"}\n'
    (tmp_path / "q.jsonl").write_bytes(data)
    message = f"{tmp_path / 'q.jsonl'}:2: not UTF-8 text (byte 0xe9); save the file as UTF-8"
    with pytest.raises(sami.io.SamiInputError) as jsonl:
        sami.io.read_jsonl(tmp_path / "q.jsonl")
    with pytest.raises(sami.io.SamiInputError) as text:
        sami.io.read_text(tmp_path / "q.jsonl")
    assert str(jsonl.value) == str(text.value) == message


def test_run_lock_refuses_a_path_that_is_a_file(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("mine")
    with pytest.raises(sami.io.SamiInputError, match=r": exists and is not a folder; choose another --output-dir$"):
        with run_lock(target):
            pass
    assert target.read_text() == "mine"
