"""Small, careful file helpers: atomic writes and JSON Lines with good error messages.

Atomic writes go through a temporary file `.NAME.XXXX.tmp` in the same folder and a rename; the file gets the mode
the user's umask gives (as `open()` would), not the temporary file's 0600. Reads of text name the file and line of
bytes that are not UTF-8 (`read_text`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from sami.errors import SamiInputError


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` (UTF-8) via a temporary file in the same folder and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def current_umask() -> int:
    """The process's umask (read from /proc where there is one, so it is never changed, even for a moment)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temporary file in the same folder and a rename (mode: 0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # name the file being written (a full disk fails in write or fsync, nameless)
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask_modes(folder: str | os.PathLike) -> None:
    """Give the files directly in `folder` the mode the umask gives (libraries that save through a private
    temporary file, as safetensors does, leave 0600 behind)."""
    mode = 0o666 & ~current_umask()
    for path in Path(folder).iterdir():
        if path.is_file() and not path.is_symlink() and (path.stat().st_mode & 0o777) != mode:
            path.chmod(mode)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write records as JSON Lines, atomically (the whole file at once)."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def decode_error(
    path: str | os.PathLike, data: bytes, error: UnicodeDecodeError, *, first_line: int = 1
) -> SamiInputError:
    """`path:LINE: not UTF-8 text (...)` for bytes of `data` (starting at line `first_line`) that failed to decode."""
    line = data.count(b"\n", 0, error.start) + first_line
    return SamiInputError(f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8")


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file; bytes that are not UTF-8 raise `SamiInputError` naming the file and line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise decode_error(path, data, e) from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield `(line_number, record)` for each non-blank line; a bad line raises naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise SamiInputError(f"{path}: file not found")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise decode_error(path, raw, e, first_line=lineno) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise SamiInputError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
            if not isinstance(record, dict):
                raise SamiInputError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record


def count_failed(paths: Iterable[str | os.PathLike]) -> int:
    """How many records of these JSON Lines files say `"status": "failed"` (a request that never got an answer)."""
    return sum(1 for path in paths for _, r in iter_jsonl(path) if r.get("status") == "failed")


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
        self.records: list[dict] = []
        for lineno, record in iter_jsonl(self.path) if self.path.exists() else ():
            if record.get(key) is None:
                raise SamiInputError(f"{self.path}:{lineno}: record without {key!r}")
            self.records.append(record)
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

    def drop(self, predicate: Callable[[dict], bool]) -> int:
        """Forget the records for which `predicate` holds (written at the next flush), so their ids are done
        again; returns how many were dropped."""
        kept = [r for r in self.records if not predicate(r)]
        dropped = len(self.records) - len(kept)
        if dropped:
            self.records = kept
            self.done = {str(r[self.key]) for r in kept}
            self._pending += dropped
        return dropped

    def flush(self) -> None:
        """Write the records to disk atomically if anything was added since the last flush."""
        if self._pending or not self.path.exists():
            write_jsonl(self.path, self.records)
            self._pending = 0
