"""The mount daemon's composition root: it builds the components, wires them to each other
and runs them in this order. The lifecycle's pieces are ``musicfs.service``'s: opening the
stores (``stores``), the supervised background work (``background``), the FUSE session,
signals, sd_notify, status, reload and the ordered shutdown (``shutdown``).

Start-up: state-dir lock -> mount point (a stale mount left by a killed daemon is lazily
unmounted and reused) -> catalog (quick_check; a corrupt one is moved aside and rebuilt;
after the mount instead when the last clean close left it untouched, ``clean_close``) and
cache repair side by side -> origins, tree -> FUSE mount -> READY=1 once the mount
answers a self-probe -> background tasks under the supervisor, control socket.

Shutdown (SIGTERM, SIGINT, ``musicfs unmount``, a critical task giving up, or an
external ``fusermount3 -u``), in this order:

1. STOPPING=1; the sync is cancelled;
2. drain: new reads answer EIO at once, reads in flight get ``fuse.drain_timeout`` to
   finish (the cache's fetches and the origins' health checks they wait on still run)
   and then answer EIO -- no player waits longer than that; then the supervisor refuses
   new work and cancels the rest (eviction, health, watchdog, cache tasks);
3. commit and close the stores (reader/cache, origins, catalog, registered closers) while
   the FUSE loop still answers metadata from memory, so no request is left unanswered;
4. end the FUSE loop and unmount; exit 0 (1 if a critical task gave up).

A second SIGTERM/SIGINT while stopping lazily unmounts at once and exits with 3.
SIGHUP re-reads the config file. SIGUSR1 dumps every thread's and trio task's stack.
"""

from __future__ import annotations

import errno
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from musicfs.cache.reader import CachingReader
from musicfs.cache.store import ChunkStore
from musicfs.catalog.model import Track
from musicfs.config import Settings
from musicfs.fuse.operations import GIL_SWITCH_INTERVAL, MusicOperations
from musicfs.fuse.search_folder import SearchFolder
from musicfs.library.coordinator import SyncCoordinator, open_pool
from musicfs.library.sync_loop import SyncLoop
from musicfs.pins.manager import PinManager
from musicfs.private import tighten
from musicfs.resources import leaves
from musicfs.search import SearchIndex
from musicfs.service import reload as config_reload
from musicfs.service import signals, status
from musicfs.service.allocator import limit_malloc_arenas
from musicfs.service.background import start_background
from musicfs.service.control_api import serve_control
from musicfs.service.crashlog import install_hooks, named_task
from musicfs.service.fuse_session import FuseSession, MountFailed
from musicfs.service.metrics import MetricsServer
from musicfs.service.mounts import MountpointError, prepare_mountpoint
from musicfs.service.notify import Notifier
from musicfs.service.shutdown import CLOSE_TIMEOUT, Closer, OrderedShutdown
from musicfs.service.startup import StartupError, refuse_missing_origins
from musicfs.service.state_lock import StateLock
from musicfs.service.status import DaemonState
from musicfs.service.stores import check_after_mount, open_stores
from musicfs.service.supervisor import Supervisor
from musicfs.service.watchdog import Watchdog

log = logging.getLogger(__name__)

# Exit codes (README "Exit codes"; dist/musicfs.service relies on them).
EXIT_OK = 0  # clean shutdown
EXIT_FAILURE = 1  # runtime failure: uncaught error, a critical task gave up, mount lost
EXIT_USAGE = 2  # bad configuration, arguments, mount point, state dir or catalog schema
EXIT_FORCED = 3  # a second SIGTERM/SIGINT cut the drain short: unmounted lazily at once

READY_TIMEOUT = 15.0


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        reload: Callable[[], Settings] | None = None,
        notifier: Notifier | None = None,
    ):
        if settings.mountpoint is None:
            raise StartupError("no mount point given")
        if not settings.origins:
            raise StartupError("no origin given (use --origin PATH or [[origin]] in the config)")
        self.settings = settings
        self.mountpoint: Path = settings.mountpoint
        # Resolved once: the status report names it on every request, on the trio loop.
        self.state_dir: Path = settings.state_dir.resolve()
        self.lock = StateLock(settings.state_dir)
        self.reload_settings = reload
        self.notifier = notifier or Notifier.from_env()
        self.supervisor = Supervisor(on_escalate=self._escalate)
        self.ops: MusicOperations | None = None
        self.session: FuseSession | None = None
        self.sync_loop: SyncLoop | None = None
        self.library: SyncCoordinator | None = None
        self.reader: CachingReader | None = None
        self.watchdog: Watchdog | None = None
        self.pins: PinManager | None = None
        self.metrics: MetricsServer | None = None
        self.search = SearchIndex(settings.search_dir)
        # Stores closed in step 3 of the shutdown, after the reader, origins and catalog
        # (e.g. the search index). ``add_closer`` registers one.
        self.closers: list[tuple[str, Closer]] = []
        # Milestones in the order they happened (status, tests of the shutdown order).
        self.events: list[str] = []
        self.state = DaemonState.STARTING
        self.exit_code = EXIT_OK
        self.started_at = time.time()
        self.catalog_moved_aside: Path | None = None
        # The catalog passed quick_check in this run (before the mount, or after it when a
        # clean close left it untouched: ``clean_close``); only then is it stamped at exit.
        self.catalog_verified = False
        self._check_after_mount = False
        self._shutdown = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._stopper = OrderedShutdown(self, CLOSE_TIMEOUT)

    def event(self, name: str) -> None:
        self.events.append(name)
        log.debug("daemon: %s", name)

    def add_closer(self, name: str, close: Closer) -> None:
        self.closers.append((name, close))

    # -- start-up --------------------------------------------------------------------

    async def _open(self) -> None:
        s = self.settings
        # The mount point first: a rejected one leaves no state directory or lock behind.
        prepare_mountpoint(self.mountpoint)
        pool = open_pool(s)
        first_run = not s.catalog_path.exists()
        if first_run:
            refuse_missing_origins(pool, lambda origin: False)
        tighten(s.state_dir)
        tighten(s.cache_dir)
        self.lock.acquire()
        reader = CachingReader(
            ChunkStore.from_settings(s.cache_dir, s.cache),
            self._fetch,
            memory_bytes=s.cache.memory,
            retry_interval=s.cache.retry_interval,
        )
        opened = await open_stores(s.catalog_path, reader, pool, first_run=first_run)
        catalog = opened.catalog
        self.catalog_moved_aside = opened.moved_aside
        self.catalog_verified = not opened.check_after_mount
        self._check_after_mount = opened.check_after_mount
        self.library = SyncCoordinator(s, catalog, pool)
        self.reader = reader
        # Remote tag reads keep the headers in the cache, in pieces (no whole chunks).
        self.library.tag_reader = self.reader.read_metadata
        self.reader.enable_prefetch(self._next_in_album)
        tree = await self.library.open_tree()
        self.ops = MusicOperations(tree, self.reader, s.fuse, free_space_of=s.cache_dir)
        self.ops.search_folder = SearchFolder(self._search_paths)
        ops = self.ops
        self.pins = PinManager(
            catalog,
            self.reader.store,
            self.reader.warm,
            s.pins,
            tree=lambda: ops.tree,
            search=self._search_paths,
            busy=lambda: ops.stats.inflight > 0,
        )
        pins = self.pins
        self.sync_loop = SyncLoop(
            self.library,
            ops.swap_tree,
            lambda: ops.tree,
            self.search,
            scan_interval=lambda: self.settings.library.scan_interval,
            # Smart pins: what the sync added is pinned too.
            after_index=pins.evaluate if pins is not None else None,
        )
        self.session = FuseSession(
            self.ops,
            self.mountpoint,
            stopping=lambda: self.state.shutting_down,
            on_lost=self.request_shutdown,
        )
        self.event("opened")

    def _search_paths(self, query: str, limit: int) -> list[str]:
        return [hit.path for hit in self.search.search(query, limit)]

    async def _next_in_album(self, track: Track) -> Track | None:
        """What playback prefetch fetches after ``track`` (``cache/prefetch.py``)."""
        assert self.library is not None
        catalog = self.library.catalog
        return await catalog.run(catalog.next_in_album, track.id)

    async def _fetch(self, track: Track, offset: int, length: int) -> bytes:
        # Through the current pool, which a reload may have replaced.
        assert self.library is not None
        return await self.library.pool.read(track, offset, length)

    def _mount(self) -> None:
        assert self.session is not None
        try:
            self.session.mount()
        except MountFailed as exc:
            raise StartupError(str(exc)) from None
        self.event("mounted")
        log.info("mounted %s (%d tracks in the catalog)", self.mountpoint, self.track_count())

    async def _wait_until_answering(self) -> None:
        """READY=1 only once a request through the kernel comes back from our workers."""
        assert self.session is not None
        failure = await self.session.wait_until_answering(READY_TIMEOUT, self._shutdown)
        if failure is None:
            self.state = DaemonState.SERVING
            self.notifier.ready(self.status_line())
            self.event("ready")
        elif not self._shutdown.is_set():
            log.error(
                "the mount did not answer within %.0fs (%s); stopping", READY_TIMEOUT, failure
            )
            self.exit_code = EXIT_FAILURE
            self.request_shutdown()

    async def _check_catalog(self) -> None:
        self.catalog_verified = await check_after_mount(self.settings.catalog_path)

    def _start_background(self) -> None:
        if self._check_after_mount:
            self._spawn("catalog-check", self._check_catalog)
        start_background(self)

    # -- running ---------------------------------------------------------------------

    async def run(self) -> int:
        install_hooks()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL)
        try:
            with signals.signal_handlers(
                stop=lambda signum: self.request_shutdown(),
                force=lambda signum: signals.exit_now(EXIT_FORCED, self._detach),
                reload=lambda: self._spawn("reload", self.reload),
            ):
                await self._open()
                assert self.session is not None
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    _start_named(nursery, "supervisor", self.supervisor.run)
                    if not self._shutdown.is_set():
                        self._mount()
                        _start_named(nursery, "fuse-main", self.session.serve)
                        await serve_control(self, nursery)
                        self._start_metrics()
                        await self._wait_until_answering()
                        if not self._shutdown.is_set():
                            await self.session.raise_background_limit()
                            self._start_background()
                    await self._shutdown.wait()
                    await self.shutdown()
                    nursery.cancel_scope.cancel()
            return self.exit_code
        finally:
            if self.metrics is not None:
                self.metrics.stop()
            with trio.CancelScope(shield=True):
                await self._stopper.close_stores()
                if self.session is not None:
                    self.session.unmount_now()
            self.lock.release()
            self.notifier.close()

    def request_shutdown(self, code: int | None = None) -> None:
        if code is not None and self.exit_code == EXIT_OK:
            self.exit_code = code
        self._shutdown.set()

    def _detach(self) -> None:
        if self.session is not None:
            self.session.detach()

    def _escalate(self, name: str, exc: BaseException) -> None:
        log.critical("critical task %s keeps failing; stopping with exit code 1", name)
        self.request_shutdown(EXIT_FAILURE)

    # -- background work ---------------------------------------------------------------

    def resync(self) -> None:
        """Start the next sync now (after a reload that changed origins or names)."""
        if self.sync_loop is not None:
            self.sync_loop.trigger()

    # -- status ----------------------------------------------------------------------

    def mode(self) -> str:
        return status.mode(self)

    def track_count(self) -> int:
        return status.track_count(self)

    def status_line(self) -> str:
        return status.status_line(self)

    def status(self) -> dict[str, Any]:
        return status.status_report(self)

    # -- metrics endpoint --------------------------------------------------------------

    def _start_metrics(self) -> None:
        """The opt-in Prometheus endpoint; its scrapes take status snapshots on our loop."""
        if self.settings.metrics.address is not None:
            self.metrics = MetricsServer.on_loop(
                self.settings.metrics, lambda: status.metrics_snapshot(self)
            )

    # -- signals ---------------------------------------------------------------------

    def _spawn(self, name: str, fn: Callable[[], Awaitable[object]]) -> None:
        if self._nursery is not None and not self.state.shutting_down:
            _start_named(self._nursery, name, fn)
        else:
            log.info("%s: ignored while the daemon is %s", name, self.state.value)

    # -- reload ----------------------------------------------------------------------

    async def reload(self) -> str:
        """Re-read the config (SIGHUP): apply what can change while mounted, log the rest."""
        return await config_reload.reload(self, self.reload_settings)

    async def apply_settings(self, new: Settings) -> str:
        return await config_reload.apply_settings(self, new)

    # -- shutdown --------------------------------------------------------------------

    async def shutdown(self) -> None:
        """The ordered shutdown; see the module docstring."""
        await self._stopper.run()


def _start_named(nursery: trio.Nursery, name: str, fn: Callable[[], Awaitable[object]]) -> None:
    """A root task whose crash is logged with ``name`` (and shown under it in stack dumps)."""
    nursery.start_soon(named_task(name, fn), name=name)


def run_daemon(settings: Settings, reload: Callable[[], Settings] | None = None) -> int:
    limit_malloc_arenas()
    daemon = Daemon(settings, reload=reload)
    try:
        return trio.run(daemon.run)
    except (StartupError, MountpointError):
        raise
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.EROFS):
            raise StartupError(str(exc)) from None
        log.critical("daemon failed", exc_info=exc)
        return EXIT_FAILURE
    except BaseExceptionGroup as group:
        for leaf in leaves(group):
            if isinstance(leaf, StartupError | MountpointError):
                raise leaf from None
        log.critical("daemon stopped after an uncaught error", exc_info=group)
        return EXIT_FAILURE
    except Exception as exc:
        log.critical("daemon stopped after an uncaught error", exc_info=exc)
        return EXIT_FAILURE
