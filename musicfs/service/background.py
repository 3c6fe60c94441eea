"""The daemon's background work once its mount answers: which tasks run under the
supervisor, and what each one's failure means (``Policy``)."""

from __future__ import annotations

from typing import Protocol

from musicfs.library.sync_loop import SyncLoop
from musicfs.service import status
from musicfs.service.notify import Notifier, watchdog_interval
from musicfs.service.status import Running
from musicfs.service.supervisor import Policy
from musicfs.service.watchdog import Watchdog, probe_mount


class Serving(Running, Protocol):
    """The parts of a running daemon its background tasks come from."""

    notifier: Notifier
    sync_loop: SyncLoop | None


def start_background(daemon: Serving) -> None:
    assert daemon.library is not None
    supervisor = daemon.supervisor

    async def sync() -> None:
        assert daemon.sync_loop is not None
        await daemon.sync_loop.run()

    supervisor.start("sync", sync, Policy.BEST_EFFORT)
    if daemon.reader is not None:
        # Write-behind, read-ahead, eviction, passthrough retries.
        supervisor.start("cache", daemon.reader.run, Policy.CRITICAL)
    if daemon.pins is not None:
        supervisor.start("pins", daemon.pins.run, Policy.BEST_EFFORT)
    supervisor.start("health", daemon.library.pool.health.run, Policy.CRITICAL)
    notifier = daemon.notifier
    interval = watchdog_interval()
    if interval is not None and notifier.enabled:
        daemon.watchdog = Watchdog(
            notifier,
            interval,
            lambda: probe_mount(daemon.mountpoint),
            probe_timeout=max(0.5, interval * 0.8),
        )
        supervisor.start("watchdog", daemon.watchdog.run, Policy.CRITICAL)
    if notifier.enabled:
        supervisor.start(
            "notify-status",
            lambda: status.send_status_lines(daemon, daemon.notifier),
            Policy.BEST_EFFORT,
        )
