"""Raise the kernel's limit on background FUSE requests for our mount, through fusectl.

Why: page-cache reads (every ``read(2)`` of a file that is not ``direct_io``) reach the
daemon as *background* requests, and the kernel hands a connection at most
``max_background`` of them at a time (12 unless the daemon says otherwise at INIT; pyfuse3
cannot). A burst of reads of uncached tracks on a hung origin fills those slots for up to
one origin operation timeout, and reads of *cached* tracks queue behind them in the
kernel -- a player stutters although its data is on local disk. The kernel lets the limit
be changed after mounting, through the FUSE control file system.

Kernel semantics (Documentation/filesystems/fuse.rst, fs/fuse/control.c):

* fusectl is mounted at ``/sys/fs/fuse/connections`` (systemd does it at boot; root can
  do it: ``mount -t fusectl fusectl /sys/fs/fuse/connections``). A connection mounted
  before fusectl was is listed too.
* each connection is a folder named by its device number as the kernel prints a ``dev_t``
  (``major << 20 | minor``; FUSE mounts are anonymous, major 0, so it is the minor number
  ``/proc/self/mountinfo`` shows in its third field);
* ``max_background`` and ``congestion_threshold`` there take a decimal number up to 65535;
  without CAP_SYS_ADMIN only up to the module parameters ``max_user_bgreq`` and
  ``max_user_congthresh`` (larger values: EINVAL). The files are mode 0600 and owned by
  the user who mounted, so an unprivileged daemon may raise its own limit that far.
* 0 for ``max_background`` would block every background request: never written.
* above ``congestion_threshold`` the kernel skips asynchronous read-ahead; libfuse sets it
  to 3/4 of ``max_background`` and so do we.

Everything here is blocking file I/O on sysfs and procfs: call it from a worker thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

from musicfs.fuse.settings import FUSE_KERNEL_BACKGROUND
from musicfs.service.mounts import parse_mountinfo

log = logging.getLogger(__name__)

CONNECTIONS = Path("/sys/fs/fuse/connections")
MODULE_PARAMETERS = Path("/sys/module/fuse/parameters")
MOUNTINFO = Path("/proc/self/mountinfo")
LIMIT = 65535  # what fusectl accepts from CAP_SYS_ADMIN (and libfuse sends at most)
_MINORBITS = 20  # the kernel's dev_t: MKDEV(major, minor) = major << 20 | minor


class FusectlError(Exception):
    """Why the limits could not be raised, worded for an operator."""


@dataclass(frozen=True)
class Limits:
    max_background: int
    congestion_threshold: int

    @classmethod
    def for_background(cls, max_background: int) -> Limits:
        return cls(max_background, max(1, max_background * 3 // 4))


@dataclass(frozen=True)
class Outcome:
    """What ``raise_limits`` did: the connection, its limits before and after."""

    connection: str
    before: Limits
    after: Limits
    mounted_fusectl: bool = False
    clamped: bool = False  # not root: held to the module's max_user_* parameters


def device_of(mountpoint: Path, mountinfo: str) -> tuple[int, int] | None:
    """(major, minor) of the FUSE file system mounted at ``mountpoint`` (the top one when
    several are stacked), from the text of ``/proc/self/mountinfo``."""
    target = os.path.abspath(mountpoint)
    top = None
    for entry in parse_mountinfo(mountinfo):
        if entry.mountpoint == target:
            top = entry
    if top is None or not (top.fstype == "fuse" or top.fstype.startswith("fuse.")):
        return None
    return top.device


def connection_name(major: int, minor: int) -> str:
    return str(major << _MINORBITS | minor)


def is_fusectl_mounted(root: Path, mountinfo: str) -> bool:
    target = os.path.abspath(root)
    return any(e.fstype == "fusectl" and e.mountpoint == target for e in parse_mountinfo(mountinfo))


def mount_fusectl(root: Path) -> None:
    """``mount -t fusectl fusectl ROOT`` (needs CAP_SYS_ADMIN); one system call, so no
    dependency on a ``mount`` binary being on the service's PATH."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"fusectl", os.fsencode(root), b"fusectl", 0, None) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(root))


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())


def read_limits(folder: Path) -> Limits:
    return Limits(_read_int(folder / "max_background"), _read_int(folder / "congestion_threshold"))


def _write_int(path: Path, value: int) -> None:
    # One write(2) of the whole number: fusectl refuses a write at a non-zero offset.
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, f"{value}\n".encode())
    finally:
        os.close(fd)


def user_limits(parameters: Path) -> Limits | None:
    """The module's caps for callers without CAP_SYS_ADMIN (None if not readable)."""
    try:
        return Limits(
            _read_int(parameters / "max_user_bgreq"),
            _read_int(parameters / "max_user_congthresh"),
        )
    except (OSError, ValueError):
        return None


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
    return str(exc)


def _advice(privileged: bool) -> str:
    if privileged:
        return "check that the fuse module is loaded and /sys is writable"
    return (
        "run the daemon as root, or have fusectl mounted at boot (systemd's "
        "sys-fs-fuse-connections.mount, or `mount -t fusectl fusectl "
        "/sys/fs/fuse/connections` as root)"
    )


def raise_limits(
    mountpoint: Path,
    wanted: Limits,
    *,
    root: Path = CONNECTIONS,
    mountinfo: Path = MOUNTINFO,
    parameters: Path = MODULE_PARAMETERS,
    privileged: bool | None = None,
    may_mount: bool | None = None,
) -> Outcome:
    """Set our connection's ``max_background`` and ``congestion_threshold`` to at least
    ``wanted`` (never lowers them). Mounts fusectl at ``root`` if it is not mounted and we
    may. Raises ``FusectlError`` saying why not and what the operator can do."""
    if wanted.max_background < 1 or wanted.congestion_threshold < 1:
        raise ValueError(f"limits must be at least 1, got {wanted}")
    if privileged is None:
        privileged = os.geteuid() == 0
    if may_mount is None:
        may_mount = privileged
    try:
        info = mountinfo.read_text(errors="surrogateescape")
    except OSError as exc:
        raise FusectlError(f"cannot read {mountinfo}: {exc.strerror}") from None
    device = device_of(mountpoint, info)
    if device is None:
        raise FusectlError(f"{mountpoint} is not a FUSE mount in {mountinfo}")
    name = connection_name(*device)
    mounted_fusectl = False
    if not is_fusectl_mounted(root, info):
        if not may_mount:
            raise FusectlError(f"fusectl is not mounted at {root}; {_advice(False)}")
        try:
            mount_fusectl(root)
        except OSError as exc:
            raise FusectlError(
                f"fusectl is not mounted at {root} and mounting it failed ({_why(exc)}); "
                f"{_advice(privileged)}"
            ) from None
        mounted_fusectl = True
    folder = root / name
    try:
        before = read_limits(folder)
    except (OSError, ValueError) as exc:
        raise FusectlError(
            f"connection {name} (device {device[0]}:{device[1]}) is not readable in {root}: "
            f"{_why(exc)}"
        ) from None
    target = Limits(
        min(LIMIT, max(before.max_background, wanted.max_background)),
        min(LIMIT, max(before.congestion_threshold, wanted.congestion_threshold)),
    )
    clamped = False
    if not privileged:
        caps = user_limits(parameters)
        if caps is not None:
            capped = Limits(
                max(before.max_background, min(target.max_background, caps.max_background)),
                max(
                    before.congestion_threshold,
                    min(target.congestion_threshold, caps.congestion_threshold),
                ),
            )
            clamped = capped != target
            target = capped
    try:
        # The slot count first: a threshold above the old maximum would mean nothing.
        if target.max_background != before.max_background:
            _write_int(folder / "max_background", target.max_background)
        if target.congestion_threshold != before.congestion_threshold:
            _write_int(folder / "congestion_threshold", target.congestion_threshold)
        after = read_limits(folder)
    except (OSError, ValueError) as exc:
        raise FusectlError(
            f"cannot raise max_background of connection {name} in {root} to "
            f"{target.max_background} ({_why(exc)}); {_advice(privileged)}"
        ) from None
    return Outcome(name, before, after, mounted_fusectl=mounted_fusectl, clamped=clamped)


class KernelFiles(TypedDict, total=False):
    """``raise_limits``'s keywords: where it reads and writes (tests give it a /sys and a
    /proc of their own) and what it may do; each left out takes ``raise_limits``' default."""

    root: Path
    mountinfo: Path
    parameters: Path
    privileged: bool | None
    may_mount: bool | None


def tune_connection(
    mountpoint: Path, max_background: int, **kernel: Unpack[KernelFiles]
) -> Outcome | None:
    """``raise_limits`` for the daemon: logs one line with the outcome (None on failure)."""
    try:
        outcome = raise_limits(mountpoint, Limits.for_background(max_background), **kernel)
    except FusectlError as exc:
        log.warning(
            "fuse: cannot raise the kernel's limit of background reads (default %d): %s; "
            "meanwhile a burst of reads on a hung origin can delay reads of cached tracks "
            "by up to one origin operation timeout",
            FUSE_KERNEL_BACKGROUND,
            exc,
        )
        return None
    log.info(
        "fuse: connection %s: max_background %d -> %d, congestion_threshold %d -> %d%s%s",
        outcome.connection,
        outcome.before.max_background,
        outcome.after.max_background,
        outcome.before.congestion_threshold,
        outcome.after.congestion_threshold,
        " (mounted fusectl)" if outcome.mounted_fusectl else "",
        " (held to the fuse module's max_user_bgreq/max_user_congthresh: not root)"
        if outcome.clamped
        else "",
    )
    return outcome
