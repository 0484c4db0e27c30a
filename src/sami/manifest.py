"""`manifest.json`: which stages of a run finished, with their outputs and content hashes."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from sami.errors import SamiInputError
from sami.io import atomic_write_json


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


class Manifest:
    """The record of finished stages. Every update rewrites the file atomically."""

    def __init__(self, run_dir: Path, config_hash: str):
        self.path = run_dir / "manifest.json"
        self.run_dir = run_dir
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise SamiInputError(f"{self.path}: invalid JSON ({e.msg})") from None
            if data.get("config_hash") != config_hash:
                raise SamiInputError(
                    f"{run_dir} holds a run made with a different config; "
                    "choose another --output-dir, or pass --restart to start it over"
                )
            self.data = data
        else:
            self.data = {"config_hash": config_hash, "created_at": _now(), "stages": {}}
            self._save()

    def done(self, stage: str) -> bool:
        return stage in self.data["stages"]

    def finish(self, stage: str, outputs: list[Path], **info) -> None:
        self.data["stages"][stage] = {
            "finished_at": _now(),
            "outputs": [str(p.relative_to(self.run_dir)) for p in outputs],
            "sha256": _hash_outputs(outputs),
            **info,
        }
        self._save()

    def _save(self) -> None:
        atomic_write_json(self.path, self.data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
