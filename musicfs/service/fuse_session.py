"""The FUSE session: mount, serve (pyfuse3's workers, restarted after a shortage of
memory), the self-probe that says the mount answers, the kernel's background limit
(fusectl), the drain of reads in flight, and the unmount.

The daemon owns the order of these steps (start-up and shutdown); this module owns how
each is done, so that the composition root reads as the sequence it is.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from musicfs.backoff import RestartBackoff
from musicfs.fuse.operations import FuseCounters, MusicOperations, mount_options
from musicfs.fuse.settings import FUSE_KERNEL_BACKGROUND
from musicfs.resources import only_shortage
from musicfs.service.fusectl import Outcome, tune_connection
from musicfs.service.mounts import MountpointError, lazy_unmount
from musicfs.service.readahead import tune_read_ahead
from musicfs.service.watchdog import probe_mount
from musicfs.statistics import snapshot

log = logging.getLogger(__name__)

FUSECTL_TIMEOUT = 5.0  # sysfs answers at once; a bound all the same
PROBE_ATTEMPT_TIMEOUT = 2.0
RESTART_FIRST_PAUSE = 0.1  # after pyfuse3's workers failed for want of memory
RESTART_MAX_PAUSE = 5.0
RESTART_CALM = 60.0  # workers that served this long start the backoff afresh
WORKER_STOP_TIMEOUT = 2.0  # after pyfuse3.terminate(), before the workers are cancelled
ABORTED_SETTLE_TIMEOUT = 1.0  # for reads answered EIO by the drain to leave


@dataclass(frozen=True)
class FuseStatistics:
    counters: FuseCounters
    worker_restarts: int  # pyfuse3's workers started again after a shortage of memory
    max_background: int | None  # the kernel's limit for our connection, once raised


class MountFailed(Exception):
    """pyfuse3 could not mount; the message says what to check."""


FUSE_CONF = Path("/etc/fuse.conf")


def _fuse_conf() -> str:
    try:
        return FUSE_CONF.read_text(errors="replace")
    except OSError:
        return ""


def mount_failure_hint(allow_other: bool, euid: int, fuse_conf: str) -> str:
    """What to check when the mount failed: for a user's ``allow_other`` that is almost
    always a missing ``user_allow_other`` (fusermount3 refuses the option without it)."""
    allowed = any(
        line.split("#", 1)[0].strip() == "user_allow_other" for line in fuse_conf.splitlines()
    )
    if allow_other and euid != 0 and not allowed:
        return (
            f"fuse.allow_other needs `user_allow_other` in {FUSE_CONF} (as root: "
            f"echo user_allow_other >> {FUSE_CONF}), or set fuse.allow_other = false"
        )
    return "is fuse3 installed and /dev/fuse usable?"


class FuseSession:
    """One kernel FUSE session on ``mountpoint`` served by ``ops``.

    ``stopping()`` tells the session the daemon is shutting down (a shortage then ends the
    workers for good); ``on_lost()`` is called when the kernel session ends without us
    (``fusermount3 -u`` from outside)."""

    def __init__(
        self,
        ops: MusicOperations,
        mountpoint: Path,
        *,
        stopping: Callable[[], bool],
        on_lost: Callable[[], None],
    ):
        self.ops = ops
        self.mountpoint = mountpoint
        self._stopping = stopping
        self._on_lost = on_lost
        self.mounted = False
        self.worker_restarts = 0
        # The kernel's limits for our connection once raised through fusectl.
        self.limits: Outcome | None = None
        self._done = trio.Event()
        self._scope: trio.CancelScope | None = None

    def statistics(self) -> FuseStatistics:
        return FuseStatistics(
            counters=snapshot(self.ops.stats),
            worker_restarts=self.worker_restarts,
            max_background=self.limits.after.max_background if self.limits else None,
        )

    # -- mount and serve -------------------------------------------------------------

    def mount(self) -> None:
        try:
            pyfuse3.init(self.ops, str(self.mountpoint), mount_options(self.ops.settings))
        except RuntimeError as exc:
            hint = mount_failure_hint(self.ops.settings.allow_other, os.geteuid(), _fuse_conf())
            raise MountFailed(f"{self.mountpoint}: FUSE mount failed ({exc}); {hint}") from None
        self.mounted = True

    async def serve(self) -> None:
        """Serve until the session ends: by ``unmount()`` or from outside."""
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                await self._serve_restarting()
        finally:
            self._done.set()
        if not self._stopping():
            log.info("%s was unmounted from outside; stopping", self.mountpoint)
            self.mounted = False
            self._on_lost()

    async def _serve_restarting(self) -> None:
        """pyfuse3's worker loop, started again when it fails for want of memory.

        A new pyfuse3 worker allocates its request buffer (about 1 MiB) on its first
        request; when that fails, pyfuse3.main raises ENOMEM and takes every worker with
        it. The session and its queued requests survive, and the requests in flight were
        answered EIO (``fuse.operations`` answers a cancelled request), so serving resumes once
        memory is back instead of the daemon dying and leaving a dead mount behind.
        Anything else still ends the daemon."""
        backoff = RestartBackoff(RESTART_FIRST_PAUSE, RESTART_MAX_PAUSE, calm=RESTART_CALM)
        while True:
            started = trio.current_time()
            try:
                await pyfuse3.main(min_tasks=4, max_tasks=self.ops.settings.max_tasks)
                return
            except (OSError, BaseExceptionGroup) as exc:
                short = only_shortage(exc)
                if short is None or self._stopping():
                    raise
                # A new episode, not the same one, if the workers served a while.
                pause = backoff.pause_after(trio.current_time() - started)
                self.worker_restarts += 1
                log.warning(
                    "fuse: a worker could not start (%s); FUSE workers restarted in %.1fs",
                    short.strerror,
                    pause,
                )
            await trio.sleep(pause)

    # -- probes and limits -----------------------------------------------------------

    async def wait_until_answering(self, timeout: float, give_up: trio.Event) -> str | None:
        """Wait until a request through the kernel comes back from our workers: None once
        it did, else why not (``timeout`` passed or ``give_up`` was set)."""
        deadline = trio.current_time() + timeout
        last: str = "no answer"
        while trio.current_time() < deadline and not give_up.is_set():
            with trio.move_on_after(PROBE_ATTEMPT_TIMEOUT):
                try:
                    await trio.to_thread.run_sync(
                        probe_mount, self.mountpoint, abandon_on_cancel=True
                    )
                except OSError as exc:
                    last = str(exc)
                else:
                    return None
            await trio.sleep(0.1)
        return last

    async def raise_background_limit(self) -> None:
        """After INIT (whose reply would otherwise reset them): lower the kernel's
        read-ahead for the mount (bdi) and let it hand us more page-cache reads at once
        (fusectl)."""
        fuse = self.ops.settings
        if fuse.read_ahead_kb:
            with trio.move_on_after(FUSECTL_TIMEOUT):
                await trio.to_thread.run_sync(
                    tune_read_ahead, self.mountpoint, fuse.read_ahead_kb, abandon_on_cancel=True
                )
        slots = fuse.background_slots
        if slots == 0:
            log.info(
                "fuse: max_background left at the kernel's %d (fuse.max_background = %d, "
                "fuse.max_tasks = %d)",
                FUSE_KERNEL_BACKGROUND,
                fuse.max_background,
                fuse.max_tasks,
            )
            return
        with trio.move_on_after(FUSECTL_TIMEOUT):
            self.limits = await trio.to_thread.run_sync(
                tune_connection, self.mountpoint, slots, abandon_on_cancel=True
            )
            return
        log.warning("fuse: fusectl did not answer within %.0fs; limits unchanged", FUSECTL_TIMEOUT)

    # -- drain and unmount -----------------------------------------------------------

    async def drain(self) -> None:
        """New reads answer EIO at once; reads in flight get ``fuse.drain_timeout`` to
        finish and then answer EIO."""
        ops = self.ops
        ops.draining = True
        timeout = ops.settings.drain_timeout
        waiting = ops.stats.inflight
        errors_before = ops.stats.read_errors
        with trio.move_on_after(timeout):
            while ops.stats.inflight:
                await trio.sleep(0.01)
        failed = ops.stats.read_errors - errors_before  # answered an errno of their own
        aborted = ops.abort_inflight()
        if aborted:
            log.warning(
                "shutdown: %d reads still running after the %.1fs drain timeout answer EIO",
                aborted,
                timeout,
            )
            with trio.move_on_after(ABORTED_SETTLE_TIMEOUT):
                while ops.stats.inflight:
                    await trio.sleep(0.01)
        log.info(
            "shutdown: drained %d in-flight reads (%d with data, %d with an error, "
            "%d answered EIO at the drain timeout)",
            waiting,
            waiting - failed - aborted,
            failed,
            aborted,
        )

    async def unmount(self) -> None:
        """End the workers (cancelled if they do not stop) and unmount."""
        if self.mounted:
            pyfuse3.terminate()
            with trio.move_on_after(WORKER_STOP_TIMEOUT):
                await self._done.wait()
            if not self._done.is_set() and self._scope is not None:
                log.warning("shutdown: FUSE workers did not stop; cancelling them")
                self._scope.cancel()
                await self._done.wait()
        self.unmount_now()

    def unmount_now(self) -> None:
        if not self.mounted:
            return
        self.mounted = False
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            log.exception("unmount of %s failed", self.mountpoint)
            return
        log.info("unmounted %s", self.mountpoint)

    def detach(self) -> None:
        """Lazily unmount at once (a forced exit): requests in flight fail."""
        if not self.mounted:
            return
        try:
            lazy_unmount(self.mountpoint)
        except (MountpointError, OSError) as exc:
            log.error("forced unmount of %s failed: %s", self.mountpoint, exc)
