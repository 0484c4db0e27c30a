"""Small, careful file helpers: atomic writes and JSON Lines with good error messages."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sami.errors import SamiInputError


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` (UTF-8) via a temporary file in the same folder and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write records as JSON Lines, atomically (the whole file at once)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, record)` for each non-blank line; a bad line raises naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise SamiInputError(f"{path}: file not found")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SamiInputError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise SamiInputError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read all records of a JSON Lines file."""
    return [record for _, record in iter_jsonl(path)]


class JsonlStore:
    """A JSON Lines file of records keyed by `id`, grown in atomic chunks.

    Every `flush()` rewrites the whole file through a temporary file and a rename, so a crash leaves
    either the previous or the new complete file, never a torn line. Opening an existing file loads the
    records already there, so a rerun can skip their ids (`done`) and never writes an id twice.
    """

    def __init__(self, path: str | os.PathLike, key: str = "id"):
        self.path = Path(path)
        self.key = key
        self.records: list[dict] = read_jsonl(self.path) if self.path.exists() else []
        self.done: set[str] = {str(r[key]) for r in self.records}
        self._pending = 0

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, record_id: object) -> bool:
        return str(record_id) in self.done

    def add(self, record: dict) -> bool:
        """Append a record unless its id is already stored; returns whether it was added."""
        record_id = str(record[self.key])
        if record_id in self.done:
            return False
        self.records.append(record)
        self.done.add(record_id)
        self._pending += 1
        return True

    def flush(self) -> None:
        """Write the records to disk atomically if anything was added since the last flush."""
        if self._pending or not self.path.exists():
            write_jsonl(self.path, self.records)
            self._pending = 0
