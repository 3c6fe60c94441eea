"""Which control socket serves which mount point, for ``musicfs status MOUNTPOINT`` and
``musicfs unmount MOUNTPOINT`` run without the daemon's ``--state-dir``/``--config``.

The control socket lives in the daemon's runtime directory, which depends on its
environment and state directory. Each daemon therefore also leaves a symlink, named after
its mount point, pointing at its socket, in a per-user directory that does not depend on
either: ``/run/user/UID/musicfs-mounts`` when the login session has one, else
``/run/musicfs-mounts-0`` for root and ``/tmp/musicfs-mounts-UID`` for others. The
directory is 0700 and must belong to the user (one made by someone else is not used).
An entry whose daemon is gone (its socket refuses connections, or is gone) is a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from musicfs.service.control import _short_address as short_address

log = logging.getLogger(__name__)


def _candidates() -> Iterator[Path]:
    uid = os.getuid()
    session = Path(f"/run/user/{uid}")
    with contextlib.suppress(OSError):
        if session.is_dir() and session.stat().st_uid == uid:
            yield session / "musicfs-mounts"
    if uid == 0:
        yield Path("/run/musicfs-mounts-0")
    yield Path(f"/tmp/musicfs-mounts-{uid}")


def _usable(directory: Path, *, create: bool) -> bool:
    """Ours and private (made so if ``create``)."""
    if create:
        with contextlib.suppress(FileExistsError, FileNotFoundError, PermissionError):
            directory.mkdir(mode=0o700)
    try:
        st = directory.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _entry_name(mountpoint: Path) -> str:
    return hashlib.sha256(os.fsencode(os.path.abspath(mountpoint))).hexdigest()[:32]


def register(mountpoint: Path, socket: Path) -> Path | None:
    """Record that ``socket`` serves ``mountpoint``; the entry's path, or None if no
    registry directory could be used (then only ``--state-dir``/``--config`` find it)."""
    for directory in _candidates():
        if not _usable(directory, create=True):
            continue
        entry = directory / _entry_name(mountpoint)
        temp = directory / f".{entry.name}.{os.getpid()}"
        try:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            temp.symlink_to(os.path.abspath(socket))
            temp.replace(entry)  # atomic: a reader sees the old entry or the new one
        except OSError as exc:
            log.warning("control: cannot register %s in %s: %s", mountpoint, directory, exc)
            continue
        return entry
    return None


def unregister(entry: Path, socket: Path) -> None:
    """Remove ``entry`` if it still points at ``socket`` (a newer daemon may own it)."""
    with contextlib.suppress(OSError):
        if os.readlink(entry) == os.path.abspath(socket):
            entry.unlink()


def answers(socket_path: Path) -> bool:
    """Does a daemon listen there? A killed one leaves its socket file behind, and a
    connection to it is refused at once."""
    if not socket_path.is_socket():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            with short_address(socket_path) as address:
                sock.connect(address)
        except OSError:
            return False
    return True


def lookup(mountpoint: Path) -> Path | None:
    """The registered control socket for ``mountpoint`` that exists, if any."""
    name = _entry_name(mountpoint)
    for directory in _candidates():
        if not _usable(directory, create=False):
            continue
        with contextlib.suppress(OSError):
            target = Path(os.readlink(directory / name))
            if answers(target):
                return target
    return None


def registered_sockets() -> list[Path]:
    """Every registered control socket that exists (for ``status`` with no mount point)."""
    found: set[Path] = set()
    for directory in _candidates():
        if not _usable(directory, create=False):
            continue
        with contextlib.suppress(OSError):
            for entry in directory.iterdir():
                with contextlib.suppress(OSError):
                    target = Path(os.readlink(entry))
                    if not entry.name.startswith(".") and answers(target):
                        found.add(target)
    return sorted(found)
