"""One writer per run folder: an OS lock on `RUN/.sami.lock`, held while `sami run` or `sami stage` writes there.

The lock is `fcntl.flock` on a file in the run folder, so the kernel drops it when the holding process dies (a
kill -9 or an OOM kill never leaves a stale lock). The file holds the holder's pid for the message a second
writer gets: `RUN: in use by sami (pid 1234); wait for it, or pass --wait to queue behind it`.

Children that the holder launches (`accelerate launch ... sami stage ...`) work under the holder's lock: the holder
names the folder and its pid in the environment (`SAMI_RUN_LOCK=PID:/real/path`), and a child that finds its
folder there, locked by that pid, goes on without locking (it could not: the parent holds it).

While it holds the lock, a writer also removes the temporary files an interrupted atomic write left behind
(`.NAME.XXXX.tmp`, see `sami.io`): nobody else can be writing them.

Hand-written (about 60 lines) because the lock must be the same one for the CLI, the launched children and any
library caller, with a one-line message naming the holder; `filelock` polls and knows nothing of a holder pid.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sami.errors import SamiInputError

log = logging.getLogger(__name__)

LOCK_NAME = ".sami.lock"
ENV = "SAMI_RUN_LOCK"


def lock_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / LOCK_NAME


def holder_pid(run_dir: str | os.PathLike) -> int | None:
    """The pid written in the lock file (the last holder; it holds the lock only while the lock is taken)."""
    try:
        text = lock_path(run_dir).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def _inherited(run_dir: Path) -> bool:
    """Whether this process runs under its parent's lock of `run_dir` (`SAMI_RUN_LOCK` names it and its holder)."""
    pid, _, path = os.environ.get(ENV, "").partition(":")
    if not (pid.isdigit() and path == os.path.realpath(run_dir) and holder_pid(run_dir) == int(pid)):
        return False
    fd = os.open(lock_path(run_dir), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True  # held, by the pid the environment names
    finally:
        os.close(fd)
    return False  # nobody holds it: the parent is gone


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the `.NAME.XXXX.tmp` files interrupted atomic writes left in `run_dir` (call only under the lock)."""
    removed = []
    for path in run_dir.rglob(".*.tmp"):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted write", len(removed))
    return removed


def check_run_folder(run_dir: Path) -> None:
    """A run folder path that holds something other than a folder is refused in one line."""
    if run_dir.exists() and not run_dir.is_dir():
        raise SamiInputError(f"{run_dir}: exists and is not a folder; choose another --output-dir")


@contextmanager
def run_lock(run_dir: str | os.PathLike, *, wait: bool = False) -> Iterator[None]:
    """Hold the run folder's lock for the `with` block (creating the folder). Another holder: refused in one line
    naming its pid (`SamiInputError`), or, with `wait`, blocks until it lets go. A process launched by the holder
    (see the module docstring) goes on under the holder's lock."""
    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if _inherited(run_dir):
        yield
        return
    fd = os.open(lock_path(run_dir), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = holder_pid(run_dir)
            who = f"pid {pid}" if pid is not None else "another process"
            raise SamiInputError(
                f"{run_dir}: in use by sami ({who}); wait for it to finish, or pass --wait to queue behind it"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        previous = os.environ.get(ENV)
        os.environ[ENV] = f"{os.getpid()}:{os.path.realpath(run_dir)}"
        try:
            remove_stale_temporaries(run_dir)
            yield
        finally:
            if previous is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = previous
    finally:
        os.close(fd)  # closing the last descriptor releases the flock
