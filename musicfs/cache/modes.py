"""What a sick cache disk does to the store: its modes, which errnos lead to which, and
the one log line an operator gets when the mode changes.

* ``normal``;
* ``degraded`` when a chunk could not be stored for lack of space even after eviction
  (data is served uncached, the next successful store clears it);
* ``passthrough`` when the cache directory is unusable (not a directory, read-only, EIO,
  permission denied, in use by another process): nothing is written, reads go to the
  origins and the store is retried periodically -- except for the chunks already stored,
  which stay served while the cache can still be read (``readonly.py``).

No mode ever fails a read by itself.
"""

from __future__ import annotations

import enum
import errno
import logging
from pathlib import Path

from musicfs.resources import describe

log = logging.getLogger(__name__)


class CacheMode(enum.StrEnum):
    NORMAL = "normal"
    DEGRADED = "degraded"  # a chunk could not be stored for lack of space
    PASSTHROUGH = "passthrough"  # the cache directory is unusable


# Errors that mean "this cache directory cannot be used right now".
UNUSABLE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOTDIR, errno.EBUSY}
# Errors that mean "no room": evict and retry once, else serve uncached.
FULL = {errno.ENOSPC, errno.EDQUOT}

NOT_OPENED = "not opened yet"
CLOSED = "closed"


class CacheCondition:
    """The store's mode and why; logs each change once."""

    def __init__(self, root: Path):
        self.root = root
        self.mode = CacheMode.PASSTHROUGH
        self.reason: str | None = NOT_OPENED

    def set(self, mode: CacheMode, reason: str | None) -> None:
        if mode == self.mode and reason == self.reason:
            return
        old, old_reason = self.mode, self.reason
        self.mode, self.reason = mode, reason
        if mode is CacheMode.PASSTHROUGH:
            log.error(
                "cache: %s: passthrough mode, reads go to the origins and nothing is cached: %s",
                self.root,
                reason,
            )
        elif mode is CacheMode.DEGRADED:
            log.warning("cache: %s: degraded, serving uncached: %s", self.root, reason)
        elif old is not CacheMode.NORMAL and old_reason not in (NOT_OPENED, CLOSED):
            log.info("cache: %s: back to normal (was %s)", self.root, old)

    def unusable(self, what: str, exc: BaseException) -> None:
        self.set(CacheMode.PASSTHROUGH, f"{what}: {describe(exc)}")

    def closed(self) -> None:
        """Closing is not a failure: no log line."""
        self.mode, self.reason = CacheMode.PASSTHROUGH, CLOSED
