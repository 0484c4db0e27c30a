"""`manifest.json`: which stages of a run finished, with the hash of the config parts each depends on, its outputs
and their content hashes.

Each stage is keyed by a `StageKey`: a hash per config part it reads, the hashes of the stages it reads (so a
change upstream changes every stage below it) and one hash over both. A stage is done when its entry exists, its
hash equals the current one and its outputs exist; otherwise it runs, and every stage that reads it runs too.
A stage that reruns over outputs of another config ("in place") clears them first (the stage does that).
Manifests written before per-stage hashes (only `config_hash`) are read as before: with the same config every
listed stage is done, with another config the folder is refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sami.errors import SamiInputError
from sami.io import atomic_write_json

MANIFEST_VERSION = 2
EVAL_STEPS = ("responses", "judgments", "metrics")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def part_hash(value: Any) -> str:
    """sha256 (16 hex digits) of the canonical JSON of `value` (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hash_outputs(paths: list[Path]) -> dict[str, str]:
    """sha256 of each output file; for a folder, of its small files (config, logs), not of the weights."""
    hashes: dict[str, str] = {}
    for path in paths:
        if path.is_file():
            hashes[path.name] = file_sha256(path)
        elif path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file() and child.suffix in {".json", ".jsonl", ".yaml"}:
                    hashes[f"{path.name}/{child.name}"] = file_sha256(child)
    return hashes


@dataclass(frozen=True)
class StageKey:
    """What one stage depends on: `parts` (config part name -> hash), `upstream` (stage name -> its hash) and
    `hash`, over both."""

    parts: dict[str, str]
    upstream: dict[str, str]
    hash: str

    @classmethod
    def of(cls, parts: Mapping[str, Any], upstream: Mapping[str, StageKey]) -> StageKey:
        """The key of a stage reading the config `parts` (name -> JSON-able value) and the `upstream` stages."""
        hashed = {name: part_hash(value) for name, value in parts.items()}
        above = {name: key.hash for name, key in upstream.items()}
        return cls(hashed, above, part_hash({"parts": hashed, "upstream": above}))

    def record(self) -> dict:
        return {"hash": self.hash, "parts": dict(self.parts), "upstream": dict(self.upstream)}


@dataclass(frozen=True)
class StageStatus:
    """Whether a stage runs, and why. `in_place`: it reruns over outputs of another config (or of stages that
    rerun), which it clears first."""

    run: bool
    reason: str
    in_place: bool = field(default=False)


def old_stage_name(name: str) -> str:
    """The name a stage had before the evaluation was split: `iter-T/responses|judgments|metrics` -> `iter-T/eval`
    (also under a comparison, `iter-T/dpo/...`)."""
    head, _, step = name.rpartition("/")
    return f"{head}/eval" if head and step in EVAL_STEPS else name


def changes(entry: Mapping[str, Any], key: StageKey) -> str:
    """Why a recorded stage no longer matches `key`: the config parts and upstream stages that changed."""
    parts, upstream = entry.get("parts"), entry.get("upstream")
    if not isinstance(parts, dict) or not isinstance(upstream, dict):
        return "hash changed"
    changed = sorted(p for p in set(parts) | set(key.parts) if parts.get(p) != key.parts.get(p))
    above = [u for u in key.upstream if upstream.get(u) != key.upstream[u]]
    said = []
    if changed:
        said.append(f"hash changed: {', '.join(changed)}")
    if above:
        said.append(f"upstream rerun: {', '.join(above)}")
    return "; ".join(said) or "hash changed"


class Manifest:
    """The record of finished stages, keyed by `keys` (stage name -> `StageKey`, in run order). Every update
    rewrites the file atomically; `write=False` reads only (for `sami run --dry-run`): nothing is written."""

    def __init__(self, run_dir: Path, config_hash: str, keys: Mapping[str, StageKey], *, write: bool = True):
        self.path = run_dir / "manifest.json"
        self.run_dir = run_dir
        self.keys = dict(keys)
        self.write = write
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise SamiInputError(f"{self.path}: invalid JSON ({e.msg})") from None
            if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
                raise SamiInputError(f"{self.path}: not a manifest (no 'stages' mapping)")
            upgrade = data.get("version") != MANIFEST_VERSION
            if upgrade:
                data = self._upgrade(data, config_hash, run_dir)
            data["config_hash"] = config_hash  # for information: the config of the latest run into the folder
            self.data = data
            if upgrade:
                self._save()
        else:
            self.data = {"version": MANIFEST_VERSION, "config_hash": config_hash, "created_at": _now(), "stages": {}}
            self._save()
        self.plan = self._plan()

    def _upgrade(self, data: dict, config_hash: str, run_dir: Path) -> dict:
        """A manifest from before per-stage hashes: the same config keeps every listed stage done (under the
        current keys); another config is refused, as before."""
        if data.get("config_hash") != config_hash:
            raise SamiInputError(
                f"{run_dir} holds a run made with a different config; "
                "choose another --output-dir, or pass --restart to start it over"
            )
        old = data["stages"]
        stages = {}
        for name, key in self.keys.items():
            entry = old.get(name, old.get(old_stage_name(name)))
            if isinstance(entry, dict):
                stages[name] = {**entry, **key.record()}
        return {**data, "version": MANIFEST_VERSION, "stages": stages}

    # ---- decisions ---------------------------------------------------------------------------------
    def _plan(self) -> dict[str, StageStatus]:
        plan: dict[str, StageStatus] = {}
        for name, key in self.keys.items():
            plan[name] = self._status(name, key, plan)
        return plan

    def _status(self, name: str, key: StageKey, plan: Mapping[str, StageStatus]) -> StageStatus:
        above = [u for u in key.upstream if u in plan and plan[u].run]
        above_in_place = any(plan[u].in_place for u in above)
        entry = self.data["stages"].get(name)
        if entry is None:
            started = self.data.get("started", {}).get(name)
            if started is None:
                return StageStatus(True, "new")
            if started.get("hash") == key.hash:
                in_place = bool(started.get("in_place")) or above_in_place
                return StageStatus(True, "interrupted: " + ("reruns in place" if in_place else "resumes"), in_place)
            return StageStatus(True, f"interrupted, then {changes(started, key)}", True)
        if entry.get("hash") != key.hash:
            return StageStatus(True, changes(entry, key), True)
        missing = [o for o in entry.get("outputs", []) if not (self.run_dir / o).exists()]
        if missing:
            return StageStatus(True, f"outputs missing: {', '.join(missing)}", True)
        if above:
            return StageStatus(True, f"upstream rerun: {', '.join(above)}", True)
        return StageStatus(False, "done")

    def status(self, stage: str) -> StageStatus:
        """What the run decided for `stage` when the manifest was read (new for a stage it does not know)."""
        return self.plan.get(stage) or StageStatus(True, "new")

    def done(self, stage: str) -> bool:
        """True when `stage` is recorded with the current hash and its outputs exist (now)."""
        key = self.keys.get(stage)
        return key is not None and not self._status(stage, key, {}).run

    # ---- updates -----------------------------------------------------------------------------------
    def start(self, stage: str, *, in_place: bool = False) -> None:
        """Record that `stage` started (its old entry, if any, no longer counts)."""
        self.data["stages"].pop(stage, None)
        key = self.keys.get(stage)
        record = key.record() if key is not None else {"hash": None}
        self.data.setdefault("started", {})[stage] = {**record, "in_place": in_place, "started_at": _now()}
        self._save()

    def finish(self, stage: str, outputs: list[Path], **info) -> None:
        key = self.keys.get(stage)
        self.data.get("started", {}).pop(stage, None)
        self.data["stages"][stage] = {
            "finished_at": _now(),
            "outputs": [str(p.relative_to(self.run_dir)) for p in outputs],
            "sha256": _hash_outputs(outputs),
            **(key.record() if key is not None else {"hash": None}),
            **info,
        }
        self._save()

    def _save(self) -> None:
        if self.write:
            atomic_write_json(self.path, self.data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
