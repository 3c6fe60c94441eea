"""Inter-process file locks: the one flock implementation behind "one daemon per state
directory", "one process per cache directory" and "one writer of the search index".

The holder writes its pid into the lock file, so the process refused can say who holds
it. flock locks belong to the open file: they vanish when the holder exits or is killed,
so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN)
_POLL = 0.05  # between attempts of a lock taken with a timeout


class LockHeld(Exception):
    """Another process holds the lock."""

    def __init__(self, path: Path, holder: str | None):
        super().__init__(f"{path}: held by pid {holder or '?'}")
        self.path = path
        self.holder = holder  # its pid as written in the file, if it wrote one


class FileLock:
    """An exclusive flock on ``path``.

    ``writable=False`` locks an existing file without writing to it (a read-only cache):
    flock works on a read-only descriptor and on a read-only filesystem. ``make_parents``
    creates the lock file's directory first."""

    def __init__(self, path: Path, *, writable: bool = True, make_parents: bool = False):
        self.path = path
        self.writable = writable
        self.make_parents = make_parents
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lock, waiting up to ``timeout`` seconds; LockHeld if another process
        still holds it then. Other errors (opening the file) are raised as they are."""
        if self.fd is not None:
            return
        if self.make_parents:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.writable:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        else:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno in _BUSY and time.monotonic() < deadline:
                    time.sleep(_POLL)
                    continue
                holder = _read_holder(fd)
                os.close(fd)
                if exc.errno in _BUSY:
                    raise LockHeld(self.path, holder) from None
                raise
        if self.writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def try_acquire(self, timeout: float = 0.0) -> bool:
        """``acquire`` that answers False instead of raising LockHeld."""
        try:
            self.acquire(timeout)
        except LockHeld:
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def is_held(path: Path) -> bool:
    """Does some process hold the lock on ``path``? (A probe that never creates the file
    nor disturbs the holder: a shared lock taken and dropped at once.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _read_holder(fd: int) -> str | None:
    try:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or None
    except OSError:
        return None
