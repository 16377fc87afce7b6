"""One exclusive lock per output path, so two jobs never write the same artefact at once.

Why a lock and not only atomic renames: a job that writes an output owns more than the final
rename (``score-logs`` keeps resumable parts next to its output, ``build-index`` swaps a
directory in two renames). Two jobs aimed at the same output undo each other's work in
between; the second one must be refused before it starts.

The lock is a hidden sibling file ``.<name>.lock`` holding the holder's pid (shown in the
refusal, so the user knows what to wait for or kill). The exclusion itself is an ``flock``
on that file: the kernel drops it when the holder exits, however it died, so a lock left by
a killed job is taken over by the next one without any guessing from pids or ages.

Imports only :mod:`pipeline.core.errors` (for the one-line refusal).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from pipeline.core.errors import ShoprankError


class LockedError(ShoprankError):
    """Another live process is writing the same output."""


#: Locks this process holds, so a library function that takes a lock may call another one
#: that takes the same lock (build_index -> build_from_vectors) without refusing itself.
_HELD: dict[Path, int] = {}
_HELD_GUARD = threading.Lock()


def lock_path(target: str | os.PathLike[str]) -> Path:
    """The lock file guarding ``target`` (a sibling, so it works for files and directories)."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a process we may not signal still exists)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError:
        return "another process"
    return f"process {text}" if text.isdigit() else "another process"


def _acquire(path: Path, what: str) -> int:
    """Open and flock the lock file; retry when the file was replaced while we waited."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ShoprankError(f"{path.parent}: cannot create the lock for {what} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(f"{what} is in use by {_holder(path)} (lock {path}); wait for it to finish "
                              "or stop it, then run again") from None
        # The previous holder unlinks the file on release: if it did so between our open and
        # our flock, we hold a lock on a file nobody else can see; start over on the new one.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(target: str | os.PathLike[str], what: str | None = None) -> Iterator[Path]:
    """Hold the lock for ``target`` for the duration of the block (re-entrant in a process).

    Raises :class:`LockedError` (one line, naming the holder's pid) if a live process holds it.
    """
    target = Path(target)
    path = lock_path(target).absolute()
    with _HELD_GUARD:
        if path in _HELD:
            _HELD[path] += 1
            owned = False
        else:
            _HELD[path] = 1
            owned = True
    fd = -1
    try:
        if owned:
            fd = _acquire(path, what or str(target))
        yield path
    finally:
        with _HELD_GUARD:
            _HELD[path] -= 1
            if not _HELD[path]:
                del _HELD[path]
        if fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)
