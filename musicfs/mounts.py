"""Mount points: what is mounted where (``/proc/self/mountinfo``), and whether a folder
can take a new MusicFS mount."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

FSNAME = "musicfs"


class MountpointError(Exception):
    pass


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_entries() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rest = right.split()
            if len(fields) < 5 or len(rest) < 2:
                continue
            entries.append(MountEntry(_unescape(fields[4]), rest[0], _unescape(rest[1])))
    return entries


def find_mount(path: Path) -> MountEntry | None:
    target = os.path.abspath(path)
    found = None
    for entry in mount_entries():
        if entry.mountpoint == target:
            found = entry  # the last one listed is the one on top
    return found


def is_musicfs(entry: MountEntry) -> bool:
    return entry.fstype in ("fuse.musicfs", "fuse") and entry.source == FSNAME


def is_stale(path: Path) -> bool:
    """A FUSE mount whose daemon died answers ENOTCONN to everything."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def lazy_unmount(path: Path) -> None:
    """Detach a (stale) FUSE mount, as ``fusermount3 -uz`` does."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        proc = subprocess.run(
            [tool, "-u", "-z", str(path)], capture_output=True, text=True, timeout=10, check=False
        )
        if proc.returncode == 0:
            return
        message = proc.stderr.strip()
    else:
        message = "fusermount3 not found"
    proc = subprocess.run(
        ["umount", "-l", str(path)], capture_output=True, text=True, timeout=10, check=False
    )
    if proc.returncode != 0:
        raise MountpointError(f"{path}: cannot unmount: {message}; {proc.stderr.strip()}")


def check_mountpoint(path: Path) -> None:
    """Raise ``MountpointError`` unless ``path`` is an empty folder that nothing is mounted on."""
    entry = find_mount(path)
    if entry is not None:
        what = "a MusicFS mount" if is_musicfs(entry) else f"a {entry.fstype} mount"
        stale = " (stale: its daemon is gone)" if is_stale(path) else ""
        raise MountpointError(f"{path}: already {what}{stale}; unmount it first")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountpointError(
            f"{path}: mount point does not exist (create the folder first)"
        ) from None
    except OSError as exc:
        raise MountpointError(f"{path}: cannot use as mount point: {exc.strerror}") from None
    import stat as stat_mod

    if not stat_mod.S_ISDIR(st.st_mode):
        raise MountpointError(f"{path}: mount point is not a directory")
    try:
        with os.scandir(path) as it:
            if next(it, None) is not None:
                raise MountpointError(f"{path}: mount point is not empty")
    except PermissionError:
        raise MountpointError(f"{path}: mount point is not readable") from None
