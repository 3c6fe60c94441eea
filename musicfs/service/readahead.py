"""Lower the kernel's page-cache read-ahead for our mount (the FUSE connection's bdi).

Why: a library scanner reads a few KiB here and there, and for every such read the kernel
asks the daemon for up to ``read_ahead_kb`` more (128 KiB by default) -- bytes past the
header region MusicFS's own sync kept, which then come from the origin. The reader runs
its own read-ahead for a stream (``musicfs/cache/planner.py``). But the same value sizes
the requests a sequential reader's small reads become: a player reading 32 KiB at a time
is asked for in requests of ``read_ahead_kb``, so too small a value multiplies the
per-request cost of a stream (16 KiB: four times the requests of 64 KiB). Never 0: the
kernel then reads page by page.

Kernel semantics (measured on this project's mounts): each FUSE mount has a backing
device info named ``major:minor`` (the device ``/proc/self/mountinfo`` shows) in
``/sys/class/bdi``; its ``read_ahead_kb`` may be written by root after INIT (whose reply
sets it). A large ``read(2)`` is sent as requests of at most the larger of
``read_ahead_kb`` and 128 KiB: a 1 MiB read is eight 128 KiB requests at 16, 64 or 128.

Blocking file I/O on sysfs and procfs: call it from a worker thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from musicfs.service.fusectl import MOUNTINFO, device_of

log = logging.getLogger(__name__)

BDI = Path("/sys/class/bdi")


@dataclass(frozen=True)
class ReadAhead:
    bdi: str
    before_kb: int
    after_kb: int


def set_read_ahead(
    mountpoint: Path, kb: int, *, root: Path = BDI, mountinfo: Path = MOUNTINFO
) -> ReadAhead:
    """Set the read-ahead of the FUSE mount at ``mountpoint`` to ``kb`` KiB. Raises
    OSError (the file or the mount is not there, or not writable) or ValueError."""
    if kb < 1:
        raise ValueError(f"read_ahead_kb must be at least 1, got {kb}")
    device = device_of(mountpoint, mountinfo.read_text(errors="surrogateescape"))
    if device is None:
        raise ValueError(f"{mountpoint} is not a FUSE mount in {mountinfo}")
    name = f"{device[0]}:{device[1]}"
    path = root / name / "read_ahead_kb"
    before = int(path.read_text().strip())
    if before != kb:
        path.write_text(f"{kb}\n")
    return ReadAhead(name, before, int(path.read_text().strip()))


def tune_read_ahead(
    mountpoint: Path, kb: int, *, root: Path = BDI, mountinfo: Path = MOUNTINFO
) -> ReadAhead | None:
    """``set_read_ahead`` for the daemon: logs one line with the outcome (None on failure)."""
    try:
        outcome = set_read_ahead(mountpoint, kb, root=root, mountinfo=mountinfo)
    except (OSError, ValueError) as exc:
        log.warning(
            "fuse: cannot set the kernel's read-ahead for %s to %d KiB (%s); a library "
            "scanner then fetches up to 128 KiB more per read than it asked for",
            mountpoint,
            kb,
            exc,
        )
        return None
    log.info(
        "fuse: bdi %s: read_ahead_kb %d -> %d", outcome.bdi, outcome.before_kb, outcome.after_kb
    )
    return outcome
