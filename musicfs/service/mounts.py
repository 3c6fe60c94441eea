"""Mount points: what is mounted where (``/proc/self/mountinfo``), and whether a folder
can take a new MusicFS mount."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat as stat_mod
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

FSNAME = "musicfs"
# A name the tree never contains (MusicFS names never start with a dot).
PROBE_NAME = ".musicfs-probe"


class MountpointError(Exception):
    pass


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    device: tuple[int, int] = (0, 0)  # (major, minor) of the mounted file system


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


def parse_mountinfo(text: str) -> list[MountEntry]:
    """The entries of a ``/proc/self/mountinfo`` text, in the kernel's order (a mount
    stacked on another comes after it)."""
    entries = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rest = right.split()
        if len(fields) < 5 or len(rest) < 2:
            continue
        major, _, minor = fields[2].partition(":")
        device = (int(major), int(minor)) if major.isdigit() and minor.isdigit() else (0, 0)
        entries.append(MountEntry(_unescape(fields[4]), rest[0], _unescape(rest[1]), device))
    return entries


def mount_entries() -> list[MountEntry]:
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def find_mount(path: Path) -> MountEntry | None:
    target = os.path.abspath(path)
    found = None
    for entry in mount_entries():
        if entry.mountpoint == target:
            found = entry  # the last one listed is the one on top
    return found


def is_musicfs(entry: MountEntry) -> bool:
    return entry.fstype in ("fuse.musicfs", "fuse") and entry.source == FSNAME


def is_stale(path: Path, timeout: float = 5.0) -> bool:
    """A FUSE mount whose daemon died answers ENOTCONN to everything."""
    return probe(path, timeout) == errno.ENOTCONN


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
    _check_folder(path)


def _check_folder(path: Path) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MountpointError(
            f"{path}: mount point does not exist (create the folder first)"
        ) from None
    except OSError as exc:
        raise MountpointError(f"{path}: cannot use as mount point: {exc.strerror}") from None
    if not stat_mod.S_ISDIR(st.st_mode):
        raise MountpointError(f"{path}: mount point is not a directory")
    try:
        with os.scandir(path) as it:
            if next(it, None) is not None:
                raise MountpointError(f"{path}: mount point is not empty")
    except PermissionError:
        raise MountpointError(f"{path}: mount point is not readable") from None


def probe(path: Path, timeout: float) -> int | None:
    """Does the file system mounted at ``path`` answer? 0 if it does, the errno if it fails
    (ENOTCONN: its FUSE daemon is gone), None if nothing came back within ``timeout`` (a
    live but wedged daemon; the helper thread is left behind and ends with the mount).

    It looks up a name that never exists: unlike ``stat(path)``, whose attributes the
    kernel may answer from its cache, a lookup the daemon answered ENOENT is asked again.
    """
    result: list[int] = []

    def run() -> None:
        try:
            os.stat(os.path.join(path, PROBE_NAME))
            result.append(0)
        except FileNotFoundError:
            result.append(0)
        except OSError as exc:
            result.append(exc.errno or errno.EIO)

    thread = threading.Thread(target=run, name=f"probe {path}", daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else None


def prepare_mountpoint(path: Path, *, timeout: float = 3.0) -> None:
    """Make ``path`` ready for a new mount, or raise ``MountpointError`` saying why not.

    A MusicFS mount left behind by a killed daemon (the kernel answers ENOTCONN) is lazily
    unmounted and the folder reused -- no manual ``fusermount3 -u`` ever. A MusicFS mount
    whose daemon still answers belongs to a running instance and is refused, as is any
    other file system mounted there.
    """
    for _ in range(8):  # several stale mounts may be stacked on one folder
        entry = find_mount(path)
        if entry is None:
            break
        if not is_musicfs(entry):
            raise MountpointError(
                f"{path}: already a {entry.fstype} mount (from {entry.source}); unmount it first"
            )
        code = probe(path, timeout)
        if code is None:
            raise MountpointError(
                f"{path}: already a MusicFS mount whose daemon is alive but does not answer; "
                "stop that daemon (or `fusermount3 -uz` the folder) first"
            )
        if code != errno.ENOTCONN:
            raise MountpointError(
                f"{path}: already a MusicFS mount served by a running daemon; stop it first "
                f"(`musicfs unmount {path}`)"
            )
        log.warning(
            "mount point %s: stale MusicFS mount left by a daemon that died; "
            "unmounting it lazily and reusing the folder",
            path,
        )
        lazy_unmount(path)
    else:
        raise MountpointError(f"{path}: still mounted after unmounting it 8 times")
    _check_folder(path)
