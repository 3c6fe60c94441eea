"""The systemd watchdog: ``WATCHDOG=1`` only while the daemon really serves.

A ping proves two things each time:

* the trio loop is responsive -- the pinging task woke up roughly on time (a loop blocked
  by a stray synchronous call sends nothing, or wakes late and skips the ping);
* the mount answers -- a self-probe in a worker thread, bounded by a timeout, gets a
  reply from the kernel, which needs a free FUSE worker. A wedged worker pool therefore
  stops the pings and systemd restarts the daemon.

A probe stuck in the kernel is abandoned, never stacked: while it is stuck no new probe
starts (and no ping is sent), so a wedge costs one thread, not one per interval.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import trio

from musicfs.service.mounts import PROBE_NAME
from musicfs.service.notify import Notifier

log = logging.getLogger(__name__)


def probe_mount(mountpoint: Path) -> None:
    """One round trip through the kernel to this daemon's FUSE workers (a lookup the kernel
    cannot answer from its cache). Raises ``OSError`` when the mount does not answer
    properly (ENOTCONN, EIO, ...)."""
    try:
        os.stat(os.path.join(mountpoint, PROBE_NAME))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OSError(exc.errno or errno.EIO, f"mount self-probe: {exc.strerror}") from None


class Watchdog:
    def __init__(
        self,
        notifier: Notifier,
        interval: float,
        probe: Callable[[], None],
        *,
        probe_timeout: float | None = None,
    ):
        self.notifier = notifier
        self.interval = interval
        self.probe = probe
        self.probe_timeout = probe_timeout if probe_timeout is not None else interval
        self.pings = 0
        self.missed = 0
        self.last_problem: str | None = None
        self._probe_busy = threading.Lock()
        # Set by the probe thread: when it started, and when the mount answered.
        self._probe_started = 0.0
        self._answered_at: float | None = None

    def _run_probe(self) -> None:
        try:
            self._probe_started = time.monotonic()
            self.probe()
            self._answered_at = time.monotonic()
        finally:
            self._probe_busy.release()

    async def check(self) -> str | None:
        """None if the mount answered within the timeout, else what went wrong."""
        # Raise a pending cancellation here, not between taking the lock and starting the
        # thread (which would leave the lock taken for good); nothing yields in between.
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._probe_busy.acquire(blocking=False):
            return "an earlier self-probe is still stuck in the kernel"
        self._answered_at = None
        try:
            with trio.move_on_after(self.probe_timeout):
                await trio.to_thread.run_sync(self._run_probe, abandon_on_cancel=True)
        except OSError as exc:
            return str(exc)
        # A loop blocked while the probe ran wakes late here (maybe past the timeout, with
        # the answer in hand): that is the loop's fault, not the mount's.
        answered = self._answered_at
        if answered is not None and answered - self._probe_started <= self.probe_timeout:
            lag = time.monotonic() - answered
            return (
                f"the event loop was unresponsive for {lag:.1f}s"
                if lag > self.interval / 2
                else None
            )
        return f"the mount did not answer a self-probe within {self.probe_timeout:.1f}s"

    async def run(self) -> None:
        """Ping every ``interval`` seconds for as long as the checks pass."""
        while True:
            due = trio.current_time() + self.interval
            await trio.sleep(self.interval)
            late = trio.current_time() - due
            if late > self.interval / 2:  # no ping this time: no probe needed either
                problem: str | None = f"the event loop was unresponsive for {late:.1f}s"
            else:
                problem = await self.check()
            if problem is None:
                self.notifier.watchdog()
                self.pings += 1
                if self.last_problem is not None:
                    log.warning("watchdog: healthy again; pinging systemd")
            else:
                self.missed += 1
                # One line when the pings stop; on a loaded machine the cause may flip
                # between a late loop and a slow probe, which is not a new event.
                if self.last_problem is None:
                    log.error("watchdog: %s; not pinging systemd", problem)
                elif problem != self.last_problem:
                    log.info("watchdog: still failing: %s", problem)
            self.last_problem = problem

    def status(self) -> dict[str, object]:
        return {
            "interval": self.interval,
            "pings": self.pings,
            "missed": self.missed,
            "problem": self.last_problem,
        }
