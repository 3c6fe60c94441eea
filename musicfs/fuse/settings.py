"""The FUSE layer's own settings ([fuse] in the config): mount options, the read
deadline, the worker and kernel background limits, the shutdown drain."""

from __future__ import annotations

from dataclasses import dataclass

# Workers that background reads can never occupy: lookups, stat, open and readdir (which
# the kernel does not count as background) always find one free.
FUSE_SPARE_WORKERS = 32
FUSE_KERNEL_BACKGROUND = 12  # the kernel's max_background when the daemon names none


@dataclass(frozen=True)
class FuseSettings:
    allow_other: bool = False
    # A FUSE read returns data or EIO within this bound, whatever the origins do.
    read_deadline: float = 8.0
    # How long the kernel may trust names and attributes before asking again.
    attr_timeout: float = 60.0
    # Requests the daemon works on at once (workers start on demand and end when idle).
    max_tasks: int = 320
    # Page-cache reads the kernel hands the daemon at once (its default is 12), raised
    # after mounting through fusectl: reads stuck on a hung origin must not hold every
    # slot while reads of cached tracks wait behind them. 0 leaves the kernel's value.
    # Held to max_tasks - FUSE_SPARE_WORKERS (``background_slots``), so that hung reads
    # never take every worker.
    max_background: int = 256
    # The kernel's page-cache read-ahead for the mount (its default: 128), set after
    # mounting. It bounds both what a scanner's small reads pull past what they asked for
    # and the size of the requests a player's small reads become (a 32 KiB read(2) loop
    # is sent as requests of this size). Measured over SFTP (bench/bench_cold.py's
    # library, ffprobe of every track / 32 KiB reads of every track): 16 -> 4.15 MiB and
    # 32 KiB requests, 64 -> 3.78 MiB and 64 KiB requests (+25 % throughput), 128 ->
    # 5.28 MiB (sshfs's figure) and 128 KiB requests. 0 leaves the kernel's value.
    read_ahead_kb: int = 64
    # On shutdown, in-flight requests get this long to finish before they answer EIO.
    drain_timeout: float = 5.0

    @property
    def background_slots(self) -> int:
        """The ``max_background`` to ask the kernel for (0: leave its value alone)."""
        slots = min(self.max_background, self.max_tasks - FUSE_SPARE_WORKERS)
        return slots if slots > FUSE_KERNEL_BACKGROUND else 0
