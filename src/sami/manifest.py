"""`manifest.json`: which stages of a run finished, with the hash of the config parts each depends on, its outputs
and their content hashes.

Each stage is keyed by a `StageKey`: a hash per config part it reads (and per input file it reads, by content:
`file:PATH` parts, see `sami.contents`), the hashes of the stages it reads (so a change upstream changes every
stage below it) and one hash over both. A stage is done when its entry exists, its hash equals the current one,
its outputs still hold what it wrote (size and mtime, then sha256 when the mtime moved) and it recorded no
failures; otherwise it runs, and every stage that reads it runs too. A stage that reruns over outputs of another
config ("in place") clears them first (the stage does that); a stage that recorded failures (`failures`, e.g. judge
requests that failed) reruns in place of nothing: it retries only what failed.
Manifests written before per-stage hashes (only `config_hash`) are read as before: with the same config every
listed stage is done, with another config the folder is refused. Version 2 manifests (keys without input file
contents) are read under the keys of the same config without file parts (`legacy_keys`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sami.contents import check_outputs, file_sha256, output_records  # noqa: F401 - file_sha256: re-exported
from sami.errors import SamiInputError
from sami.io import atomic_write_json, read_text

MANIFEST_VERSION = 3
EVAL_STEPS = ("responses", "judgments", "metrics")
MANIFEST_NAME = "manifest.json"


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` holds a sami manifest (a JSON object with a `stages` mapping)."""
    try:
        data = json.loads(read_text(folder / MANIFEST_NAME))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("stages"), dict)


def part_hash(value: Any) -> str:
    """sha256 (16 hex digits) of the canonical JSON of `value` (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_shape(data: object, path: Path) -> None:
    """Refuse, in one line naming the entry, a manifest whose parts have the wrong types (e.g. edited by hand)."""
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise SamiInputError(f"{path}: not a manifest (no 'stages' mapping)")
    for section in ("stages", "started"):
        entries = data.get(section, {})
        if not isinstance(entries, dict):
            raise SamiInputError(f"{path}: {section}: expected a mapping, got {type(entries).__name__}")
        for name, entry in entries.items():
            if not isinstance(entry, dict):
                raise SamiInputError(f"{path}: {section}.{name}: expected a mapping, got {type(entry).__name__}")
            for field_name, kind in (("hash", (str, type(None))), ("outputs", list), ("files", dict)):
                if field_name in entry and not isinstance(entry[field_name], kind):
                    raise SamiInputError(
                        f"{path}: {section}.{name}.{field_name}: wrong type ({type(entry[field_name]).__name__})"
                    )
            if not all(isinstance(o, str) for o in entry.get("outputs", [])):
                raise SamiInputError(f"{path}: {section}.{name}.outputs: expected a list of paths")
            if not isinstance(entry.get("failures", 0), int):
                raise SamiInputError(f"{path}: {section}.{name}.failures: expected an integer")


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
    files = [p.removeprefix("file:") for p in changed if p.startswith("file:")]
    changed = [p for p in changed if not p.startswith("file:")]
    above = [u for u in key.upstream if upstream.get(u) != key.upstream[u]]
    said = []
    if files:
        said.append(f"file changed: {', '.join(files)}")
    if changed:
        said.append(f"hash changed: {', '.join(changed)}")
    if above:
        said.append(f"upstream rerun: {', '.join(above)}")
    return "; ".join(said) or "hash changed"


class Manifest:
    """The record of finished stages, keyed by `keys` (stage name -> `StageKey`, in run order). Every update
    rewrites the file atomically; `write=False` reads only (for `sami run --dry-run`): nothing is written."""

    def __init__(
        self,
        run_dir: Path,
        config_hash: str,
        keys: Mapping[str, StageKey],
        *,
        write: bool = True,
        legacy_keys: Mapping[str, StageKey] | None = None,
    ):
        self.path = run_dir / MANIFEST_NAME
        self.run_dir = run_dir
        self.keys = dict(keys)
        self.legacy_keys = dict(legacy_keys or {})
        self.write = write
        if self.path.exists():
            try:
                data = json.loads(read_text(self.path))
            except json.JSONDecodeError as e:
                raise SamiInputError(f"{self.path}:{e.lineno}: invalid JSON ({e.msg})") from None
            _check_shape(data, self.path)
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
        current keys); another config is refused, as before. A version 2 manifest (no input file contents in the
        keys): each stage whose hash is the one it would have had then (`legacy_keys`) takes its current key."""
        if data.get("version") == 2:
            stages = {}
            for name, entry in data["stages"].items():
                old, new = self.legacy_keys.get(name), self.keys.get(name)
                if old is not None and new is not None and entry.get("hash") == old.hash:
                    entry = {**entry, **new.record()}
                stages[name] = entry
            return {**data, "version": MANIFEST_VERSION, "stages": stages}
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
        damaged = check_outputs(entry["files"], self.run_dir) if isinstance(entry.get("files"), dict) else None
        if damaged:
            return StageStatus(True, f"output damaged: {damaged}", True)
        if above:
            return StageStatus(True, f"upstream rerun: {', '.join(above)}", True)
        if entry.get("failures"):
            return StageStatus(True, f"incomplete: {entry['failures']} failed, retried")
        return StageStatus(False, "done")

    def incomplete(self) -> dict[str, str]:
        """Stage -> what failed in it, for the finished stages that recorded failures (now)."""
        out = {}
        for name, entry in self.data["stages"].items():
            if name in self.keys and entry.get("failures"):
                out[name] = f"{entry['failures']} failed"
        return out

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

    def finish(self, stage: str, outputs: list[Path], *, failures: int = 0, **info) -> None:
        """Record `stage` as finished with `outputs` (their sizes, mtimes and digests). `failures`: how many of its
        items failed (e.g. judge requests); such a stage counts as incomplete and reruns to retry them."""
        key = self.keys.get(stage)
        self.data.get("started", {}).pop(stage, None)
        self.data["stages"][stage] = {
            "finished_at": _now(),
            "outputs": [str(p.relative_to(self.run_dir)) for p in outputs],
            "files": output_records(outputs, self.run_dir),
            **(key.record() if key is not None else {"hash": None}),
            **({"failures": failures} if failures else {}),
            **info,
        }
        self._save()

    def _save(self) -> None:
        if self.write:
            atomic_write_json(self.path, self.data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
