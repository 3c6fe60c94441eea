"""One daemon per state directory: the lock the daemon holds for its lifetime (and the pin
commands while they run without one)."""

from __future__ import annotations

import errno
from pathlib import Path

from musicfs.locks import FileLock, LockHeld
from musicfs.service.startup import StartupError


class StateLock:
    """One daemon per state directory: two would corrupt each other's catalog and cache."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "musicfs.lock"
        self._lock = FileLock(self.path, make_parents=True)

    def acquire(self) -> None:
        try:
            self._lock.acquire()
        except LockHeld as held:
            raise StartupError(
                f"{self.path.parent}: another MusicFS (pid {held.holder or '?'}) is using this "
                "state directory; stop it or use --state-dir"
            ) from None
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC):
                raise
            # Usually a failing disk remounted read-only, or a directory owned by someone
            # else: say which directory and why, not just the lock file's errno.
            raise StartupError(
                f"state directory {self.path.parent} is not writable "
                f"({errno.errorcode[exc.errno]}: {exc.strerror}); MusicFS keeps its catalog, "
                "search index and lock there: make it writable or use --state-dir"
            ) from None

    def release(self) -> None:
        self._lock.release()
