"""The mount daemon: start-up sequence, background work, signals and ordered shutdown."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
from pathlib import Path

import pyfuse3
import trio

from musicfs.cache.reader import DirectReader, Reader
from musicfs.catalog.db import Catalog
from musicfs.config import Settings
from musicfs.fuse_ops import MusicOperations, mount_options
from musicfs.library import Library, TreePublisher, open_pool
from musicfs.mounts import check_mountpoint
from musicfs.search import SearchIndex

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class StartupError(Exception):
    """The daemon cannot start; the message says why and what to do."""


class StateLock:
    """One daemon per state directory: two would corrupt each other's catalog and cache."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / "musicfs.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
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


class Daemon:
    def __init__(self, settings: Settings):
        if settings.mountpoint is None:
            raise StartupError("no mount point given")
        if not settings.origins:
            raise StartupError("no origin given (use --origin PATH or [[origin]] in the config)")
        self.settings = settings
        self.mountpoint: Path = settings.mountpoint
        self.lock = StateLock(settings.state_dir)
        self.ops: MusicOperations | None = None
        self.library: Library | None = None
        self.reader: Reader | None = None
        self.search = SearchIndex(settings.search_dir)
        self._shutdown = trio.Event()
        self._mounted = False

    # -- start-up --------------------------------------------------------------------

    async def _open(self) -> None:
        s = self.settings
        check_mountpoint(self.mountpoint)
        self.lock.acquire()
        catalog = await trio.to_thread.run_sync(Catalog, s.catalog_path)
        pool = open_pool(s)
        self.library = Library(s, catalog, pool)
        self.reader = DirectReader(pool.read)
        tree = await self.library.build_tree()
        self.ops = MusicOperations(tree, self.reader, s.fuse)

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
        log.info(
            "mounted %s (%d tracks in the catalog)",
            self.mountpoint,
            sum(1 for _ in self.ops.tree.files()),
        )

    # -- background work ---------------------------------------------------------------

    async def _sync_loop(self) -> None:
        assert self.library is not None and self.ops is not None
        publisher = TreePublisher(self.library, self.ops.swap_tree)
        interval = self.settings.library.scan_interval
        while True:
            ok = False

            async def sync() -> None:
                nonlocal ok
                assert self.library is not None
                ok = await self.library.sync(on_batch=publisher.batch_committed)

            await publisher.run_while(sync)
            await self.search.update_async(self.ops.tree)
            if interval <= 0:
                return
            # An origin that could not be listed is retried sooner than the full interval.
            await trio.sleep(interval if ok else min(interval, 60.0))

    async def _signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("received %s: unmounting", signal.Signals(signum).name)
                self.request_shutdown()
                return

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def _fuse_main(self) -> None:
        assert self.settings.fuse.max_tasks
        await pyfuse3.main(min_tasks=4, max_tasks=self.settings.fuse.max_tasks)
        # main() returns when the kernel session ends, e.g. `fusermount3 -u` from outside.
        self.request_shutdown()

    async def run(self) -> int:
        try:
            await self._open()
            self._mount()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._fuse_main)
                nursery.start_soon(self._signals, nursery)
                nursery.start_soon(self._sync_loop)
                assert self.library is not None
                nursery.start_soon(self.library.pool.health.run)
                await self._shutdown.wait()
                assert self.ops is not None
                self.ops.draining = True
                with trio.move_on_after(self.settings.fuse.read_deadline + 2):
                    pyfuse3.terminate()
                    # Cancel background work but give FUSE workers their deadline to finish.
                    nursery.cancel_scope.cancel()
            return EXIT_OK
        finally:
            await self._close()

    async def _close(self) -> None:
        if self._mounted:
            try:
                pyfuse3.close(unmount=True)
            except Exception:
                log.exception("unmount failed")
            self._mounted = False
            log.info("unmounted %s", self.mountpoint)
        # Shutdown flushes the search index: its last commit then holds the last sync.
        await trio.to_thread.run_sync(self.search.close)
        if self.library is not None:
            await self.library.pool.aclose()
            await trio.to_thread.run_sync(self.library.catalog.close)
        self.lock.release()


def run_daemon(settings: Settings) -> int:
    daemon = Daemon(settings)
    try:
        return trio.run(daemon.run)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT):
            raise StartupError(str(exc)) from None
        raise
