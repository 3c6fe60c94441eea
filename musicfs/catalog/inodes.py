"""Inode numbers and the stable keys they are allocated for.

The catalog's ``inodes`` table maps a key to the inode number the kernel was given, so a
folder or a track keeps its number across restarts and syncs. A folder's key is its path
of name components, a track's its catalog id: this module is the only place that spells
them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ROOT_INODE = 1
_DIR = "d:"
_FILE = "f:"


def dir_key(folder: Sequence[str]) -> str:
    """The key of the folder at ``folder`` (its name components; () is the root)."""
    return _DIR + "/".join(folder)


def file_key(track_id: int) -> str:
    return f"{_FILE}{track_id}"


ROOT_KEY = dir_key(())


def scratch_inodes(keys: Iterable[str]) -> dict[str, int]:
    """Inode numbers for a tree nobody mounts (search, fsck): paths do not depend on
    them, and the catalog's own allocator would write to the catalog."""
    result = {}
    next_ino = ROOT_INODE + 1
    for key in keys:
        if key == ROOT_KEY:
            result[key] = ROOT_INODE
        else:
            result[key] = next_ino
            next_ino += 1
    return result
