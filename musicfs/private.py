"""State and cache are the user's business: the catalog names every track, the cache holds
their bytes. Whatever MusicFS creates is owner-only (0700 folders, 0600 files), even when
the mount itself is shared with ``allow_other``."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Everything created meanwhile (SQLite and its WAL, tantivy, LMDB, chunk files,
    folders) is owner-only, whatever the caller's umask."""
    old = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def tighten(directory: Path) -> None:
    """An existing state or cache folder of ours that others can enter is closed to them
    (one chmod of the top folder hides everything under it)."""
    try:
        st = directory.stat()
    except OSError:
        return  # not there yet: it will be made private
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
        try:
            os.chmod(directory, stat.S_IMODE(st.st_mode) & 0o700)
        except OSError as exc:
            log.warning("%s: could not make it owner-only: %s", directory, exc)
            return
        log.info("%s: made owner-only (it was %o)", directory, stat.S_IMODE(st.st_mode))
