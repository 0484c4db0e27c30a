"""Stages rerun alone: each manifest stage is keyed by the hash of the config parts it depends on.

One finished tiny run (module scope) is copied for each test; the copy is rerun with a changed config and the
test asserts which stages ran (`Manifest.start`) and which files kept their bytes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from test_pipeline import STAGES, tiny_config, write_config

import sami.manifest
from sami.cli import main
from sami.pipeline import plan_stages
from sami.run_config import parse_config
from sami.stage_parts import config_hash
from sami.stages import stage_keys


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(folder: Path, *, skip: Path | None = None) -> dict[str, str]:
    """sha256 of every file under `folder` (not under `skip`), by relative path."""
    return {
        str(p.relative_to(folder)): digest(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and (skip is None or skip not in p.parents)
    }


def kept_files(run: Path) -> dict[str, str]:
    """The files a judge swap must not touch: samples, checkpoints, evaluated responses and their scores."""
    names = ("samples.jsonl", "responses.jsonl", "mi_responses.jsonl", "contrast_responses.jsonl", "scores.json")
    files = [p for p in run.rglob("*") if p.is_file() and (p.name in names or p.parent.name == "train")]
    return {str(p.relative_to(run)): digest(p) for p in sorted(files)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict]:
    """A finished two-iteration tiny run and its config."""
    root = tmp_path_factory.mktemp("stages")
    config = tiny_config(tiny_model_dir)
    assert main(["run", str(write_config(root / "cfg.yaml", config)), "--output-dir", str(root / "run")]) == 0
    return root / "run", config


@pytest.fixture
def run_copy(finished, tmp_path) -> tuple[Path, dict]:
    run, config = finished
    shutil.copytree(run, tmp_path / "run", symlinks=True)
    return tmp_path / "run", copy.deepcopy(config)


@pytest.fixture
def started(monkeypatch) -> list[str]:
    """The stages that ran, in order."""
    seen: list[str] = []
    original = sami.manifest.Manifest.start

    def record(self, stage, **kwargs):
        seen.append(stage)
        return original(self, stage, **kwargs)

    monkeypatch.setattr(sami.manifest.Manifest, "start", record)
    return seen


def rerun(tmp_path: Path, run: Path, config: dict, *extra: str) -> int:
    return main(["run", str(write_config(tmp_path / "changed.yaml", config)), "--output-dir", str(run), *extra])


def dry_run(tmp_path: Path, run: Path, config: dict, capsys) -> dict[str, tuple[str, str]]:
    """`sami run --dry-run`: stage -> (run|skip, reason); asserts that not one byte of the run folder changed."""
    before = tree(run)
    capsys.readouterr()
    assert rerun(tmp_path, run, config, "--dry-run") == 0
    assert tree(run) == before and not (run / "manifest.json.tmp").exists()
    plan = {}
    for line in capsys.readouterr().out.splitlines():
        verdict, name, reason = line.split(None, 2)
        plan[name] = (verdict, reason)
    return plan


def ran(plan: dict[str, tuple[str, str]]) -> list[str]:
    return [name for name, (verdict, _) in plan.items() if verdict == "run"]


def judged_later(config: dict) -> dict:
    """The same run with another judge setting (the local judge now judges both orders)."""
    config = copy.deepcopy(config)
    config["evaluation"]["judge"] = {**config["evaluation"]["judge"], "both_orders": True}
    return config


AFTER_JUDGE = ["iter-1/judgments", "iter-1/metrics", "iter-2/judgments", "iter-2/metrics", "report"]


def test_a_finished_run_plans_nothing(finished, tmp_path, capsys):
    run, config = finished
    plan = dry_run(tmp_path, run, config, capsys)
    assert list(plan) == STAGES
    assert all(v == ("skip", "done") for v in plan.values())


def test_judge_swap_reruns_judgments_metrics_and_report_only(run_copy, tmp_path, capsys, started):
    run, config = run_copy
    config = judged_later(config)
    plan = dry_run(tmp_path, run, config, capsys)
    assert ran(plan) == AFTER_JUDGE
    assert plan["iter-1/judgments"][1] == "hash changed: evaluation.judge"
    assert plan["iter-1/metrics"][1] == "upstream rerun: iter-1/judgments"
    assert plan["iter-1/responses"] == ("skip", "done")

    kept = kept_files(run)
    assert any(k.endswith("train/model.safetensors") for k in kept) and "iter-1/samples.jsonl" in kept
    judged = {t: digest(run / f"iter-{t}" / "eval" / "judgments-base.jsonl") for t in (1, 2)}
    metrics = {t: digest(run / f"iter-{t}" / "eval" / "metrics.json") for t in (0, 1, 2)}
    assert rerun(tmp_path, run, config) == 0
    assert started == AFTER_JUDGE
    assert kept_files(run) == kept  # samples, checkpoints and evaluated responses keep their bytes
    for t in (1, 2):
        ev = run / f"iter-{t}" / "eval"
        assert digest(ev / "judgments-base.jsonl") != judged[t]
        assert digest(ev / "metrics.json") != metrics[t]
        assert json.loads((ev / "metrics.json").read_text())["judge"]["both_orders"] is True
        aside = [p for p in ev.iterdir() if p.name.startswith("judgments-base") and p.name != "judgments-base.jsonl"]
        assert [digest(p) for p in aside] == [judged[t]]  # the other judge's verdicts, kept aside, not mixed
    assert digest(run / "iter-0" / "eval" / "metrics.json") == metrics[0]
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"]) == [s for s in STAGES if s not in AFTER_JUDGE] + AFTER_JUDGE
    assert not manifest.get("started")
    # and now it is done: nothing more to run
    assert ran(dry_run(tmp_path, run, config, capsys)) == []


def test_training_change_reruns_training_and_what_follows(run_copy, tmp_path, capsys, started):
    run, config = run_copy
    config["training"] = {**config["training"], "learning_rate": 5e-3}
    plan = dry_run(tmp_path, run, config, capsys)
    first = ["constitutions", "iter-0/responses", "iter-0/metrics", "iter-1/samples"]
    assert ran(plan) == [s for s in STAGES if s not in first]
    assert plan["iter-1/train"][1] == "hash changed: training"
    assert plan["iter-1/responses"][1] == "upstream rerun: iter-1/train"
    assert plan["iter-2/samples"][1] == "upstream rerun: iter-1/train"

    samples = digest(run / "iter-1" / "samples.jsonl")
    weights = digest(run / "iter-1" / "train" / "model.safetensors")
    # Mark π_1's old responses: a rerun that resumed from them (instead of clearing them) would keep the marks.
    responses = run / "iter-1" / "eval" / "responses.jsonl"
    records = [json.loads(line) for line in responses.read_text().splitlines()]
    marked = [{**r, "response": "STALE"} if r["side"] == "model" else r for r in records]
    responses.write_text("".join(json.dumps(r) + "\n" for r in marked))
    assert rerun(tmp_path, run, config) == 0
    assert started == ran(plan)
    assert digest(run / "iter-1" / "samples.jsonl") == samples
    assert digest(run / "iter-1" / "train" / "model.safetensors") != weights
    records = [json.loads(line) for line in responses.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in marked)
    assert not [r for r in records if r["response"] == "STALE"]
    assert ran(dry_run(tmp_path, run, config, capsys)) == []


def test_dry_run_says_why(finished, tmp_path, capsys):
    run, config = finished
    later = copy.deepcopy(config)
    later["iterations"] = {**later["iterations"], "steps": [1, 3]}  # only iteration 2 trains longer
    plan = dry_run(tmp_path, run, later, capsys)
    assert ran(plan) == ["iter-2/train", "iter-2/responses", "iter-2/judgments", "iter-2/metrics", "report"]
    assert plan["iter-2/train"][1] == "hash changed: iterations.steps"
    # how often training checkpoints, where the run goes and how it is launched change no stage
    same = copy.deepcopy(config)
    same["training"] = {**same["training"], "save_steps": 7}
    same["launcher"] = {"kind": "local", "num_processes": 2}
    assert ran(dry_run(tmp_path, run, same, capsys)) == []
    # how often evaluation files are written changes no evaluation stage (only the report, which shows the config)
    same["evaluation"] = {**same["evaluation"], "chunk_size": 1}
    assert ran(dry_run(tmp_path, run, same, capsys)) == ["report"]
    # a new iteration runs alone: the others are done
    more = copy.deepcopy(config)
    more["iterations"] = {"count": 3, "steps": [1, 2, 1]}
    plan = dry_run(tmp_path, run, more, capsys)
    assert ran(plan) == [f"iter-3/{s}" for s in ("samples", "train", "responses", "judgments", "metrics")] + ["report"]
    assert plan["iter-3/samples"][1] == "new"


def test_missing_outputs_rerun_the_stage_and_what_reads_it(run_copy, tmp_path, capsys, started):
    run, config = run_copy
    (run / "iter-2" / "eval" / "metrics.json").unlink()
    plan = dry_run(tmp_path, run, config, capsys)
    assert ran(plan) == ["iter-2/metrics", "report"]
    assert plan["iter-2/metrics"][1] == "outputs missing: iter-2/eval/metrics.json"
    assert plan["report"][1] == "upstream rerun: iter-2/metrics"
    kept = tree(run, skip=run / "report")
    assert rerun(tmp_path, run, config) == 0
    assert started == ["iter-2/metrics", "report"]
    after = tree(run, skip=run / "report")
    changed = {k for k in after if after.get(k) != kept.get(k)}
    assert changed == {"iter-2/eval/metrics.json", "manifest.json"}


def old_style(run: Path, config: dict) -> None:
    """Rewrite the run's manifest as sami wrote it before per-stage hashes: a config hash and `iter-T/eval`."""
    manifest = json.loads((run / "manifest.json").read_text())
    stages = {}
    for name, entry in manifest["stages"].items():
        old = sami.manifest.old_stage_name(name)
        stages.setdefault(old, {k: entry[k] for k in ("finished_at", "outputs", "sha256") if k in entry})
    old = {"config_hash": config_hash(parse_config(config)), "created_at": manifest["created_at"], "stages": stages}
    (run / "manifest.json").write_text(json.dumps(old, indent=2))


def test_old_manifest_with_the_same_config_is_done(run_copy, tmp_path, capsys, started):
    run, config = run_copy
    old_style(run, config)
    assert "iter-1/eval" in json.loads((run / "manifest.json").read_text())["stages"]
    plan = dry_run(tmp_path, run, config, capsys)
    assert ran(plan) == []
    before = tree(run, skip=run / "report")
    assert rerun(tmp_path, run, config) == 0
    assert started == []
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["version"] == sami.manifest.MANIFEST_VERSION and list(manifest["stages"]) == STAGES
    keys = stage_keys(parse_config(config))
    assert all(manifest["stages"][name]["hash"] == keys[name].hash for name in STAGES)
    after = tree(run, skip=run / "report")
    assert {k for k in after if after.get(k) != before.get(k)} == {"manifest.json"}


def test_old_manifest_with_another_config_is_refused(run_copy, tmp_path, capsys):
    run, config = run_copy
    old_style(run, config)
    before = tree(run)
    assert rerun(tmp_path, run, judged_later(config)) == 2
    assert "different config" in capsys.readouterr().err
    assert rerun(tmp_path, run, config, "--dry-run") == 0  # the same config still reads it
    assert rerun(tmp_path, run, judged_later(config), "--dry-run") == 2
    assert tree(run) == before


def test_plan_of_a_missing_folder_is_all_new_and_creates_nothing(tmp_path, tiny_model_dir):
    plan = plan_stages(parse_config(tiny_config(tiny_model_dir)), tmp_path / "nowhere")
    assert list(plan) == STAGES and all(s.run and s.reason == "new" for s in plan.values())
    assert not (tmp_path / "nowhere").exists()


def test_reruns_touch_nothing_outside_the_run_folder(run_copy, tmp_path, tiny_model_dir, capsys):
    """Neither a rerun, nor a dry run, nor --restart writes or deletes outside the run folder; --restart empties
    the folder (a link in it is removed, never followed) and keeps the folder itself."""
    run, config = run_copy
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the run's")
    (run / "link").symlink_to(outside, target_is_directory=True)
    model = tree(Path(tiny_model_dir))
    config = judged_later(config)
    write_config(tmp_path / "changed.yaml", config)
    sibling = tree(tmp_path, skip=run)
    dry_run(tmp_path, run, config, capsys)
    assert rerun(tmp_path, run, config) == 0
    assert tree(tmp_path, skip=run) == sibling and tree(Path(tiny_model_dir)) == model
    inode = run.stat().st_ino
    assert rerun(tmp_path, run, config, "--restart", "--dry-run") == 0
    assert (run / "iter-1" / "samples.jsonl").is_file()  # a dry run never deletes
    assert rerun(tmp_path, run, config, "--restart") == 0
    assert run.stat().st_ino == inode and not (run / "link").exists()
    assert (outside / "keep.txt").read_text() == "not the run's"
    assert tree(tmp_path, skip=run) == sibling and tree(Path(tiny_model_dir)) == model
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"]) == STAGES


def test_comparison_stages_are_keyed_like_samis(tiny_model_dir):
    """A DPO setting changes the DPO stages (and the report) only; a judge change reaches the DPO judgments too."""
    base = tiny_config(tiny_model_dir, iterations={"count": 1, "steps": [1]}, comparisons={"dpo": {"beta": 0.1}})
    keys = stage_keys(parse_config(base))
    dpo = ["iter-1/dpo/train", "iter-1/dpo/responses", "iter-1/dpo/judgments", "iter-1/dpo/metrics"]
    assert list(keys)[-5:] == [*dpo, "report"]
    assert set(keys["iter-1/dpo/responses"].upstream) == {
        "constitutions", "iter-1/dpo/train", "iter-1/responses", "iter-0/responses"
    }  # fmt: skip

    def changed(config: dict) -> list[str]:
        other = stage_keys(parse_config(config))
        return [name for name in keys if other[name].hash != keys[name].hash]

    assert changed({**base, "comparisons": {"dpo": {"beta": 0.3}}}) == [*dpo, "report"]
    assert changed(judged_later(base)) == [
        "iter-1/judgments", "iter-1/metrics", "iter-1/dpo/judgments", "iter-1/dpo/metrics", "report"
    ]  # fmt: skip
    # a run without comparisons keeps its keys when the section is written out empty (`comparisons: null`)
    plain = tiny_config(tiny_model_dir)
    assert stage_keys(parse_config({**plain, "comparisons": None})) == stage_keys(parse_config(plain))


def test_stage_names_do_not_depend_on_input_contents(tiny_model_dir):
    """`sami run --restart --dry-run` lists the stages of `stage_keys(config, contents=False)` (no input file is read):
    the same stages, in the same order, as the keys with the input contents."""
    config = parse_config(tiny_config(tiny_model_dir, comparisons={"dpo": {}, "sft": {}}))
    with_contents, without = stage_keys(config), stage_keys(config, contents=False)
    assert list(without) == list(with_contents)
    assert without["iter-1/train"].hash != with_contents["iter-1/train"].hash  # the model folder is in one only
