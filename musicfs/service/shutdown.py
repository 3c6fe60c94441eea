"""The daemon's ordered shutdown (the steps are in ``musicfs.daemon``'s docstring), and
closing its stores: in order, each within a bound, one failing or hanging store never
keeping the others from committing -- exactly once, in step 3 or on the way out of a
start-up that failed."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from musicfs.cache.reader import CachingReader
from musicfs.catalog import clean_close
from musicfs.catalog.db import Catalog
from musicfs.library.coordinator import SyncCoordinator
from musicfs.search import SearchIndex
from musicfs.service.fuse_session import FuseSession
from musicfs.service.notify import Notifier
from musicfs.service.status import DaemonState
from musicfs.service.supervisor import Supervisor

log = logging.getLogger(__name__)

Closer = Callable[[], Awaitable[object]]

CLOSE_TIMEOUT = 10.0  # each step's bound


class Stopping(Protocol):
    """The parts of a running daemon its shutdown stops and closes."""

    state: DaemonState
    notifier: Notifier
    supervisor: Supervisor
    session: FuseSession | None
    library: SyncCoordinator | None
    reader: CachingReader | None
    search: SearchIndex
    # Stores closed after the reader and the search index (``Daemon.add_closer``).
    closers: list[tuple[str, Closer]]
    # The catalog passed quick_check in this run: only then is it stamped at exit.
    catalog_verified: bool

    def event(self, name: str) -> None: ...


class OrderedShutdown:
    def __init__(self, daemon: Stopping, timeout: float = CLOSE_TIMEOUT):
        self.daemon = daemon
        self.timeout = timeout
        self._stores_closed = False

    async def run(self) -> None:
        daemon = self.daemon
        daemon.state = DaemonState.STOPPING
        # No WATCHDOG=1 after STOPPING=1: the watchdog ends before STOPPING is sent (it
        # was stopped after the sync, which left it time to ping after STOPPING).
        await daemon.supervisor.stop("watchdog", timeout=self.timeout)
        daemon.notifier.stopping("stopping: draining requests")
        daemon.event("stopping")
        log.info("shutdown: stopping background work")
        # The sync stops first; the cache's fetches and the health checks that reads in
        # flight wait on keep running until those reads are answered.
        await daemon.supervisor.stop("sync", timeout=self.timeout)
        if daemon.session is not None:
            await daemon.session.drain()
        daemon.event("drained")
        await daemon.supervisor.close(timeout=self.timeout)
        daemon.event("background-stopped")
        await self.close_stores()
        daemon.event("stores-closed")
        if daemon.session is not None:
            await daemon.session.unmount()
        if daemon.library is not None:
            # The mount answered metadata until now; nothing reads the tree any more.
            catalog = daemon.library.catalog
            catalog.close_reader()
            if daemon.catalog_verified and catalog.closed:
                await trio.to_thread.run_sync(clean_close.leave, catalog.path)
        daemon.event("unmounted")
        daemon.state = DaemonState.STOPPED

    async def close_stores(self) -> None:
        daemon = self.daemon
        if self._stores_closed or daemon.library is None:
            return  # closed already, or start-up stopped before opening any store
        self._stores_closed = True
        steps: list[tuple[str, Closer]] = []
        if daemon.reader is not None:
            steps.append(("reader", daemon.reader.aclose))
        # Its last commit then holds the last sync.
        steps.append(("search", lambda: trio.to_thread.run_sync(daemon.search.close)))
        steps.extend(daemon.closers)
        steps.append(("origins", daemon.library.pool.aclose))
        catalog: Catalog = daemon.library.catalog
        steps.append(
            ("catalog", lambda: trio.to_thread.run_sync(catalog.close, True))  # keep_reader
        )
        await close_in_order(steps, self.timeout)


async def close_in_order(steps: Sequence[tuple[str, Closer]], timeout: float) -> None:
    for name, close in steps:
        with trio.move_on_after(timeout) as scope:
            try:
                await close()
            except Exception:
                log.exception("shutdown: closing %s failed", name)
        if scope.cancelled_caught:
            log.error("shutdown: closing %s took over %.0fs; moving on", name, timeout)
    log.info("shutdown: stores committed and closed")
