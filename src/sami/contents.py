"""What files hold, for the manifest: digests of the input files a stage reads, and records of the outputs it wrote.

- `input_digest(path)`: a file by the sha256 of its bytes; a folder (a local model) by the sha256 of its small
  files (config, tokenizer: under 1 MiB) and the size and mtime of its large ones (the weights), so keying a 14 GB
  model costs a `stat`, not a read. A stage's key holds one `file:PATH` part per input (`stage_inputs`), so editing
  a query file, a constitution or a model folder reruns exactly the stages that read it.
- `output_records(paths, root)` / `check_outputs(records, root)`: every file a stage wrote (recursively for a
  folder) with its size, mtime and sha256; checking compares size and mtime first and reads the file for its digest
  only when the mtime moved. A missing, truncated or edited output makes its stage rerun.

Hand-written: the manifest's cache keys need exactly these two cheap checks over our own layout; no library does it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SMALL_FILE = 1 << 20  # folder files up to this size are keyed by content, larger ones by size and mtime


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def input_digest(path: str | os.PathLike) -> str:
    """16 hex digits standing for what `path` holds now ("missing" when nothing is there)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)[:16]
    if not path.is_dir():
        return "missing"
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = child.relative_to(path).as_posix()
        if rel.startswith(".") or "/." in rel:  # caches, locks, temporary files
            continue
        st = child.stat()
        what = file_sha256(child) if st.st_size <= SMALL_FILE else f"{st.st_size}:{st.st_mtime_ns}"
        digest.update(f"{rel}\0{what}\n".encode())
    return digest.hexdigest()[:16]


def file_parts(paths: list[str | os.PathLike | None]) -> dict[str, str]:
    """`{"file:PATH": digest}` for each local input path (hub ids and other names that are not paths are left
    out: their identity is the config value itself)."""
    parts = {}
    for p in paths:
        if p is None:
            continue
        path = Path(p).expanduser()
        if path.exists():
            parts[f"file:{p}"] = input_digest(path)
    return parts


def _record(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}


def output_records(paths: list[Path], root: Path) -> dict[str, dict]:
    """Relative path -> {size, mtime_ns, sha256} of every file in `paths` (folders: every file below them)."""
    records: dict[str, dict] = {}
    for path in paths:
        files = (
            [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        )
        for f in files:
            records[f.relative_to(root).as_posix()] = _record(f)
    return records


def check_outputs(records: dict, root: Path) -> str | None:
    """Why the recorded outputs no longer hold (the first file missing, resized or changed), or None when they do.
    Reads a file only when its size matches and its mtime does not."""
    for rel, rec in records.items():
        path = root / rel
        if not isinstance(rec, dict):
            return f"{rel}: bad record in the manifest"
        try:
            st = path.stat()
        except OSError:
            return f"{rel} missing"
        if not path.is_file():
            return f"{rel} is not a file"
        if st.st_size != rec.get("size"):
            return f"{rel} changed size ({rec.get('size')} -> {st.st_size} bytes)"
        if st.st_mtime_ns != rec.get("mtime_ns") and file_sha256(path) != rec.get("sha256"):
            return f"{rel} changed (sha256 differs)"
    return None
