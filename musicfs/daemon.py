"""The mount daemon: start-up sequence, supervised background work, signals, sd_notify and
the ordered shutdown.

Start-up: state-dir lock -> mount point (a stale mount left by a killed daemon is lazily
unmounted and reused) -> catalog (quick_check; a corrupt one is moved aside and rebuilt)
-> origins, reader, tree -> FUSE mount -> READY=1 once the mount answers a self-probe ->
background tasks under the supervisor, control socket.

Shutdown (SIGTERM, SIGINT, ``musicfs unmount``, a critical task giving up, or an
external ``fusermount3 -u``), in this order:

1. STOPPING=1; the supervisor refuses new work and cancels sync, eviction, health, watchdog;
2. drain: new reads answer EIO at once, reads in flight get ``fuse.drain_timeout`` to
   finish and then answer EIO -- no player waits longer than that;
3. commit and close the stores (reader/cache, origins, catalog, registered closers) while
   the FUSE loop still answers metadata from memory, so no request is left unanswered;
4. end the FUSE loop and unmount; exit 0 (1 if a critical task gave up).

A second SIGTERM/SIGINT while stopping lazily unmounts at once and exits with 3.
SIGHUP re-reads the config file. SIGUSR1 dumps every thread's and trio task's stack.
"""

from __future__ import annotations

import contextlib
import errno
import faulthandler
import fcntl
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pyfuse3
import trio

from musicfs.cache.reader import CachingReader
from musicfs.cache.store import ChunkStore
from musicfs.catalog.db import Catalog, SchemaTooNew
from musicfs.catalog.integrity import open_catalog
from musicfs.catalog.model import Track
from musicfs.config import FUSE_KERNEL_BACKGROUND, ConfigError, Settings
from musicfs.fuse_ops import MusicOperations, mount_options
from musicfs.fuse_search import SearchFolder
from musicfs.library import Library, TreePublisher, open_pool
from musicfs.resources import leaves, only_shortage
from musicfs.search import SearchIndex
from musicfs.service import control
from musicfs.service.allocator import limit_malloc_arenas
from musicfs.service.crashlog import dump_stacks, install_hooks, named_task
from musicfs.service.fusectl import Outcome, tune_connection
from musicfs.service.mounts import MountpointError, lazy_unmount, prepare_mountpoint
from musicfs.service.notify import Notifier, watchdog_interval
from musicfs.service.reload import plan_reload
from musicfs.service.supervisor import Policy, Supervisor
from musicfs.service.watchdog import Watchdog, probe_mount

log = logging.getLogger(__name__)

# Exit codes (README "Exit codes"; dist/musicfs.service relies on them).
EXIT_OK = 0  # clean shutdown
EXIT_FAILURE = 1  # runtime failure: uncaught error, a critical task gave up, mount lost
EXIT_USAGE = 2  # bad configuration, arguments, mount point, state dir or catalog schema
EXIT_FORCED = 3  # a second SIGTERM/SIGINT cut the drain short: unmounted lazily at once

READY_TIMEOUT = 15.0
FUSECTL_TIMEOUT = 5.0  # sysfs answers at once; a bound all the same
STATUS_INTERVAL = 1.0  # checked this often; sent only when it changed
CLOSE_TIMEOUT = 10.0
FUSE_RESTART_FIRST_PAUSE = 0.1  # after pyfuse3's workers failed for want of memory
FUSE_RESTART_MAX_PAUSE = 5.0
FUSE_RESTART_CALM = 60.0  # workers that served this long start the backoff afresh


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class StateLock:
    """One daemon per state directory: two would corrupt each other's catalog and cache."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "musicfs.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC):
                raise
            # Usually a failing disk remounted read-only, or a directory owned by someone
            # else: say which directory and why, not just the lock file's errno.
            raise StartupError(
                f"state directory {self.path.parent} is not writable "
                f"({errno.errorcode[exc.errno]}: {exc.strerror}); MusicFS keeps its catalog, "
                "search index and lock there: make it writable or use --state-dir"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StartupError(
                    f"{self.path.parent}: another MusicFS (pid {holder or '?'}) is using this "
                    "state directory; stop it or use --state-dir"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


Closer = Callable[[], Awaitable[object]]


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
        self.lock = StateLock(settings.state_dir)
        self.reload_settings = reload
        self.notifier = notifier or Notifier.from_env()
        self.supervisor = Supervisor(on_escalate=self._escalate)
        self.ops: MusicOperations | None = None
        self.library: Library | None = None
        self.reader: CachingReader | None = None
        self.watchdog: Watchdog | None = None
        # The kernel's limits for our connection once raised through fusectl.
        self.fuse_limits: Outcome | None = None
        self.search = SearchIndex(settings.search_dir)
        # Stores closed in step 3 of the shutdown, after the reader, origins and catalog
        # (e.g. the search index). ``add_closer`` registers one.
        self.closers: list[tuple[str, Closer]] = []
        # Milestones in the order they happened (status, tests of the shutdown order).
        self.events: list[str] = []
        self.state = "starting"
        self.exit_code = EXIT_OK
        self.started_at = time.time()
        self.catalog_moved_aside: Path | None = None
        self._shutdown = trio.Event()
        self._sync_now = trio.Event()
        self._fuse_done = trio.Event()
        self.fuse_restarts = 0
        self._fuse_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._mounted = False
        self._stores_closed = False
        self._stop_signals = 0

    def event(self, name: str) -> None:
        self.events.append(name)
        log.debug("daemon: %s", name)

    def add_closer(self, name: str, close: Closer) -> None:
        self.closers.append((name, close))

    # -- start-up --------------------------------------------------------------------

    async def _open(self) -> None:
        s = self.settings
        self.lock.acquire()
        try:
            prepare_mountpoint(self.mountpoint)
        except MountpointError:
            self.lock.release()
            raise
        try:
            catalog, self.catalog_moved_aside = await trio.to_thread.run_sync(
                open_catalog, s.catalog_path
            )
        except SchemaTooNew as exc:
            raise StartupError(str(exc)) from None
        pool = open_pool(s)
        self.library = Library(s, catalog, pool)
        self.reader = CachingReader(
            ChunkStore.from_settings(s.cache_dir, s.cache),
            self._fetch,
            memory_bytes=s.cache.memory,
            retry_interval=s.cache.retry_interval,
        )
        await self.reader.open()  # start-up repair; a bad cache means passthrough, not exit
        # Remote tag reads keep the headers in the cache, in pieces (no whole chunks).
        self.library.tag_reader = self.reader.read_metadata
        tree = await self.library.build_tree()
        self.ops = MusicOperations(tree, self.reader, s.fuse, free_space_of=s.cache_dir)
        self.ops.search_folder = SearchFolder(self._search_paths)
        self.event("opened")

    def _search_paths(self, query: str, limit: int) -> list[str]:
        return [hit.path for hit in self.search.search(query, limit)]

    async def _fetch(self, track: Track, offset: int, length: int) -> bytes:
        # Through the current pool, which a reload may have replaced.
        assert self.library is not None
        return await self.library.pool.read(track, offset, length)

    def _mount(self) -> None:
        assert self.ops is not None
        try:
            pyfuse3.init(self.ops, str(self.mountpoint), mount_options(self.settings.fuse))
        except RuntimeError as exc:
            raise StartupError(
                f"{self.mountpoint}: FUSE mount failed ({exc}); is fuse3 "
                "installed and /dev/fuse usable?"
            ) from None
        self._mounted = True
        self.event("mounted")
        log.info(
            "mounted %s (%d tracks in the catalog)",
            self.mountpoint,
            self.ops.tree.file_count,
        )

    async def _fuse_main(self) -> None:
        try:
            with trio.CancelScope() as scope:
                self._fuse_scope = scope
                await self._serve_fuse()
        finally:
            self._fuse_done.set()
        if self.state not in ("stopping", "stopped"):
            # The kernel session ended without us: `fusermount3 -u` from outside.
            log.info("%s was unmounted from outside; stopping", self.mountpoint)
            self._mounted = False
            self.request_shutdown()

    async def _serve_fuse(self) -> None:
        """pyfuse3's worker loop, started again when it fails for want of memory.

        A new pyfuse3 worker allocates its request buffer (about 1 MiB) on its first
        request; when that fails, pyfuse3.main raises ENOMEM and takes every worker with
        it. The session and its queued requests survive, and the requests in flight were
        answered EIO (``fuse_ops`` answers a cancelled request), so serving resumes once
        memory is back instead of the daemon dying and leaving a dead mount behind.
        Anything else still ends the daemon."""
        pause = FUSE_RESTART_FIRST_PAUSE
        while True:
            started = trio.current_time()
            try:
                await pyfuse3.main(min_tasks=4, max_tasks=self.settings.fuse.max_tasks)
                return
            except (OSError, BaseExceptionGroup) as exc:
                short = only_shortage(exc)
                if short is None or self.state in ("stopping", "stopped"):
                    raise
                if trio.current_time() - started > FUSE_RESTART_CALM:
                    pause = FUSE_RESTART_FIRST_PAUSE  # a new episode, not the same one
                self.fuse_restarts += 1
                log.warning(
                    "fuse: a worker could not start (%s); FUSE workers restarted in %.1fs",
                    short.strerror,
                    pause,
                )
            await trio.sleep(pause)
            pause = min(pause * 2, FUSE_RESTART_MAX_PAUSE)

    async def _wait_until_answering(self) -> None:
        """READY=1 only once a request through the kernel comes back from our workers."""
        deadline = trio.current_time() + READY_TIMEOUT
        last: str = "no answer"
        while trio.current_time() < deadline and not self._shutdown.is_set():
            with trio.move_on_after(2.0):
                try:
                    await trio.to_thread.run_sync(
                        probe_mount, self.mountpoint, abandon_on_cancel=True
                    )
                except OSError as exc:
                    last = str(exc)
                else:
                    self.state = "serving"
                    self.notifier.ready(self.status_line())
                    self.event("ready")
                    return
            await trio.sleep(0.1)
        if not self._shutdown.is_set():
            log.error("the mount did not answer within %.0fs (%s); stopping", READY_TIMEOUT, last)
            self.exit_code = EXIT_FAILURE
            self.request_shutdown()

    async def _raise_background_limit(self) -> None:
        """Let the kernel hand us more page-cache reads at once (fusectl), after INIT --
        whose reply would otherwise reset the limit."""
        slots = self.settings.fuse.background_slots
        if slots == 0:
            log.info(
                "fuse: max_background left at the kernel's %d (fuse.max_background = %d, "
                "fuse.max_tasks = %d)",
                FUSE_KERNEL_BACKGROUND,
                self.settings.fuse.max_background,
                self.settings.fuse.max_tasks,
            )
            return
        with trio.move_on_after(FUSECTL_TIMEOUT):
            self.fuse_limits = await trio.to_thread.run_sync(
                tune_connection, self.mountpoint, slots, abandon_on_cancel=True
            )
            return
        log.warning("fuse: fusectl did not answer within %.0fs; limits unchanged", FUSECTL_TIMEOUT)

    def _start_background(self) -> None:
        assert self.library is not None
        self.supervisor.start("sync", self._sync_loop, Policy.BEST_EFFORT)
        if self.reader is not None:
            # Write-behind, read-ahead, eviction, passthrough retries.
            self.supervisor.start("cache", self.reader.run, Policy.CRITICAL)
        self.supervisor.start("health", self.library.pool.health.run, Policy.CRITICAL)
        interval = watchdog_interval()
        if interval is not None and self.notifier.enabled:
            self.watchdog = Watchdog(
                self.notifier,
                interval,
                lambda: probe_mount(self.mountpoint),
                probe_timeout=max(0.5, interval * 0.8),
            )
            self.supervisor.start("watchdog", self.watchdog.run, Policy.CRITICAL)
        if self.notifier.enabled:
            self.supervisor.start("notify-status", self._status_loop, Policy.BEST_EFFORT)

    # -- running ---------------------------------------------------------------------

    async def run(self) -> int:
        install_hooks()
        try:
            with self._signal_handlers():
                await self._open()
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    _start_named(nursery, "supervisor", self.supervisor.run)
                    if not self._shutdown.is_set():
                        self._mount()
                        _start_named(nursery, "fuse-main", self._fuse_main)
                        await self._start_control(nursery)
                        await self._wait_until_answering()
                        if not self._shutdown.is_set():
                            await self._raise_background_limit()
                            self._start_background()
                    await self._shutdown.wait()
                    await self.shutdown()
                    nursery.cancel_scope.cancel()
            return self.exit_code
        finally:
            with trio.CancelScope(shield=True):
                await self._close_stores()
                self._unmount_now()
            self.lock.release()
            self.notifier.close()

    def request_shutdown(self, code: int | None = None) -> None:
        if code is not None and self.exit_code == EXIT_OK:
            self.exit_code = code
        self._shutdown.set()

    def _escalate(self, name: str, exc: BaseException) -> None:
        log.critical("critical task %s keeps failing; stopping with exit code 1", name)
        self.request_shutdown(EXIT_FAILURE)

    # -- background work ---------------------------------------------------------------

    async def _sync_loop(self) -> None:
        assert self.library is not None and self.ops is not None
        publisher = TreePublisher(self.library, self.ops.swap_tree)
        indexed: int | None = None  # the tree generation the search index was last fed
        while True:
            self._sync_now = trio.Event()
            ok = False

            async def sync() -> None:
                nonlocal ok
                assert self.library is not None
                ok = await self.library.sync()

            await publisher.run_while(sync)
            tree = self.ops.tree
            # Only a new tree (or a failed update, or the first pass) needs an index diff.
            if tree.generation != indexed and await self.search.update_async(tree) is not None:
                indexed = tree.generation
            interval = self.settings.library.scan_interval
            # An origin that could not be listed is retried sooner than the full interval;
            # an interval of 0 means "only when asked" (start-up, SIGHUP).
            delay = (interval if ok else min(interval, 60.0)) if interval > 0 else float("inf")
            with trio.move_on_after(delay):
                await self._sync_now.wait()

    async def _status_loop(self) -> None:
        last = ""
        while True:
            line = self.status_line()
            if line != last:
                self.notifier.status(line)
                last = line
            await trio.sleep(STATUS_INTERVAL)

    # -- status ----------------------------------------------------------------------

    def mode(self) -> str:
        """online | degraded | offline | passthrough, from the components that report one
        (the cache's passthrough wins over the origins' mode)."""
        for component in (self.reader, self.library.pool if self.library else None):
            report = _status_of(component)
            if isinstance(report, dict) and report.get("mode") in (
                "offline",
                "degraded",
                "passthrough",
            ):
                return str(report["mode"])
        return "online"

    def track_count(self) -> int:
        return self.ops.tree.file_count if self.ops else 0

    def status_line(self) -> str:
        parts = [self.state, self.mode(), f"{self.track_count()} tracks"]
        cache = _status_of(self.reader)
        if isinstance(cache, dict) and "used_bytes" in cache:
            parts.append(f"cache {int(cache['used_bytes']) // 1024**2} MiB")
        if self.library is not None and self.library.progress:
            p = self.library.progress
            parts.append(f"syncing {p['origin']} {p['done']}/{p['total'] or '?'}")
        return "; ".join(parts)

    def status(self) -> dict[str, Any]:
        ops = self.ops
        report: dict[str, Any] = {
            "pid": os.getpid(),
            "mountpoint": str(self.mountpoint),
            "state": self.state,
            "mode": self.mode(),
            "uptime": round(time.time() - self.started_at, 1),
            "tracks": self.track_count(),
            "tasks": self.supervisor.status(),
            "sync": self.library.status() if self.library else None,
            "origins": _status_of(self.library.pool) if self.library else None,
            "cache": _status_of(self.reader),
            "watchdog": self.watchdog.status() if self.watchdog else None,
            "catalog_moved_aside": str(self.catalog_moved_aside)
            if self.catalog_moved_aside
            else None,
        }
        if ops is not None:
            st = ops.stats
            report["fuse"] = {
                "reads": st.reads,
                "read_bytes": st.read_bytes,
                "read_errors": st.read_errors,
                "deadline_misses": st.deadline_misses,
                "inflight": st.inflight,
                "unexpected": st.unexpected,
                "cancelled": st.cancelled,
                "worker_restarts": self.fuse_restarts,
                "max_background": self.fuse_limits.after.max_background
                if self.fuse_limits
                else None,
                "requests": dict(st.by_op),
            }
        return report

    # -- control socket ----------------------------------------------------------------

    async def _start_control(self, nursery: trio.Nursery) -> None:
        path = control.socket_path(self.settings.run_dir, self.mountpoint)

        async def status(request: dict[str, Any]) -> dict[str, Any]:
            return {"status": self.status()}

        async def unmount(request: dict[str, Any]) -> dict[str, Any]:
            log.info("control: unmount requested")
            self.request_shutdown()
            return {"stopping": True, "pid": os.getpid()}

        async def reload(request: dict[str, Any]) -> dict[str, Any]:
            return {"result": await self.reload()}

        server = control.ControlServer(
            path, {"status": status, "unmount": unmount, "reload": reload}
        )
        try:
            await server.bind()
        except OSError as exc:
            log.error("control socket %s: %s; `musicfs status` cannot reach this daemon", path, exc)
            return
        _start_named(nursery, "control", server.serve)

    # -- signals ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        """Plain signal handlers (not trio's receiver) so that a second SIGTERM works even
        when the event loop is stuck: it runs on the main thread between bytecodes."""
        token = trio.lowlevel.current_trio_token()

        def on_stop(signum: int, frame: FrameType | None) -> None:
            self._stop_signals += 1
            if self._stop_signals == 1:
                token.run_sync_soon(self._first_stop_signal, signum)
            else:
                self._force_exit(signum)

        def on_hup(signum: int, frame: FrameType | None) -> None:
            token.run_sync_soon(self._spawn, "reload", self.reload)

        def on_usr1(signum: int, frame: FrameType | None) -> None:
            token.run_sync_soon(dump_stacks)

        handlers = {
            signal.SIGTERM: on_stop,
            signal.SIGINT: on_stop,
            signal.SIGHUP: on_hup,
            signal.SIGUSR1: on_usr1,
        }
        previous = {signum: signal.signal(signum, fn) for signum, fn in handlers.items()}
        # Thread stacks straight from the C signal handler (works with a wedged loop),
        # then our handler above logs the trio tasks.
        faulthandler.register(signal.SIGUSR1, file=2, all_threads=True, chain=True)
        try:
            yield
        finally:
            faulthandler.unregister(signal.SIGUSR1)
            for signum, old in previous.items():
                signal.signal(signum, old)

    def _first_stop_signal(self, signum: int) -> None:
        log.info(
            "received %s: shutting down (send it again to unmount at once)",
            signal.Signals(signum).name,
        )
        self.request_shutdown()

    def _spawn(self, name: str, fn: Callable[[], Awaitable[object]]) -> None:
        if self._nursery is not None and self.state not in ("stopping", "stopped"):
            _start_named(self._nursery, name, fn)
        else:
            log.info("%s: ignored while the daemon is %s", name, self.state)

    def _force_exit(self, signum: int) -> None:
        log.warning(
            "received %s again: unmounting at once, in-flight requests fail",
            signal.Signals(signum).name,
        )
        if self._mounted:
            try:
                lazy_unmount(self.mountpoint)
            except (MountpointError, OSError) as exc:
                log.error("forced unmount of %s failed: %s", self.mountpoint, exc)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(EXIT_FORCED)

    # -- reload ----------------------------------------------------------------------

    async def reload(self) -> str:
        """Re-read the config (SIGHUP): apply what can change while mounted, log the rest."""
        if self.reload_settings is None or self.settings.source is None:
            message = "reload: started without --config, nothing to re-read"
            log.warning(message)
            return message
        self.notifier.reloading()
        try:
            try:
                new = await trio.to_thread.run_sync(self.reload_settings)
            except ConfigError as exc:
                message = f"reload: {exc}; keeping the running configuration"
                log.error(message)
                return message
            return await self.apply_settings(new)
        finally:
            self.notifier.send("READY=1", f"STATUS={self.status_line()}")

    async def apply_settings(self, new: Settings) -> str:
        plan = plan_reload(self.settings, new)
        for name in plan.needs_restart:
            log.warning("reload: %s changed; it takes effect after a restart", name)
        old, self.settings = self.settings, plan.settings
        if self.library is not None:
            self.library.settings = plan.settings
            if "library.template" in plan.changed:
                self.library.set_template(plan.settings.library.template)
            if plan.origins_changed:
                old_pool = self.library.pool
                self.library.pool = open_pool(plan.settings)
                log.info(
                    "reload: origins now %s",
                    ", ".join(o.display_url for o in self.library.pool),
                )
                # The health monitor watches the pool it was started on: move it over.
                await self.supervisor.stop("health")
                if not self.supervisor.closed:
                    self.supervisor.start("health", self.library.pool.health.run, Policy.CRITICAL)
                await old_pool.aclose()
        if self.ops is not None:
            self.ops.settings = plan.settings.fuse
        reconfigure = getattr(self.reader, "reconfigure", None)
        if callable(reconfigure):
            await reconfigure(plan.settings)
        if plan.settings.log_level != old.log_level:
            logging.getLogger().setLevel(plan.settings.log_level.upper())
        if plan.resync:
            self._sync_now.set()
        applied = ", ".join(plan.changed) or "nothing changed"
        log.info("reload: applied %s", applied)
        return applied

    # -- shutdown --------------------------------------------------------------------

    async def shutdown(self) -> None:
        """The ordered shutdown; see the module docstring."""
        self.state = "stopping"
        self.notifier.stopping("stopping: draining requests")
        self.event("stopping")
        log.info("shutdown: stopping background work")
        await self.supervisor.close(timeout=CLOSE_TIMEOUT)
        self.event("background-stopped")
        await self._drain()
        self.event("drained")
        await self._close_stores()
        self.event("stores-closed")
        await self._unmount()
        self.event("unmounted")
        self.state = "stopped"

    async def _drain(self) -> None:
        ops = self.ops
        if ops is None:
            return
        ops.draining = True
        timeout = self.settings.fuse.drain_timeout
        waiting = ops.stats.inflight
        with trio.move_on_after(timeout):
            while ops.stats.inflight:
                await trio.sleep(0.01)
        aborted = ops.abort_inflight()
        if aborted:
            log.warning(
                "shutdown: %d reads still running after the %.1fs drain timeout answer EIO",
                aborted,
                timeout,
            )
            with trio.move_on_after(1.0):
                while ops.stats.inflight:
                    await trio.sleep(0.01)
        log.info("shutdown: drained %d in-flight reads (%d answered EIO)", waiting, aborted)

    async def _close_stores(self) -> None:
        if self._stores_closed:
            return
        self._stores_closed = True
        steps: list[tuple[str, Closer]] = []
        if self.reader is not None:
            steps.append(("reader", self.reader.aclose))
        # Its last commit then holds the last sync.
        steps.append(("search", lambda: trio.to_thread.run_sync(self.search.close)))
        steps.extend(self.closers)
        if self.library is not None:
            steps.append(("origins", self.library.pool.aclose))
            catalog: Catalog = self.library.catalog
            steps.append(("catalog", lambda: trio.to_thread.run_sync(catalog.close)))
        for name, close in steps:
            with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                try:
                    await close()
                except Exception:
                    log.exception("shutdown: closing %s failed", name)
            if scope.cancelled_caught:
                log.error("shutdown: closing %s took over %.0fs; moving on", name, CLOSE_TIMEOUT)
        log.info("shutdown: stores committed and closed")

    async def _unmount(self) -> None:
        if self._mounted:
            pyfuse3.terminate()
            with trio.move_on_after(2.0):
                await self._fuse_done.wait()
            if not self._fuse_done.is_set() and self._fuse_scope is not None:
                log.warning("shutdown: FUSE workers did not stop; cancelling them")
                self._fuse_scope.cancel()
                await self._fuse_done.wait()
        self._unmount_now()

    def _unmount_now(self) -> None:
        if not self._mounted:
            return
        self._mounted = False
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            log.exception("unmount of %s failed", self.mountpoint)
            return
        log.info("unmounted %s", self.mountpoint)


def _start_named(nursery: trio.Nursery, name: str, fn: Callable[[], Awaitable[object]]) -> None:
    """A root task whose crash is logged with ``name`` (and shown under it in stack dumps)."""
    nursery.start_soon(named_task(name, fn), name=name)


def _status_of(component: object) -> object:
    status = getattr(component, "status", None)
    if not callable(status):
        return None
    try:
        return status()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


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
