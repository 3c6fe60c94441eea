"""The library as the daemon and the CLI see it: catalog + origins + the tree built from
them. Owns turning a sync into a new tree snapshot."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import apsw
import trio

from musicfs.catalog.db import Catalog
from musicfs.catalog.naming import Template
from musicfs.catalog.publish_process import PublishFailed, publish_in_child
from musicfs.catalog.published_tree import TreeState
from musicfs.catalog.served import ServedTree, publish_state
from musicfs.config import ConfigError, Settings
from musicfs.failpoints import fail_point
from musicfs.library.sync import Progress, ReadTrack, SyncResult, sync_origin
from musicfs.origins.base import OriginError
from musicfs.origins.health import HealthPolicy
from musicfs.origins.open import open_origin
from musicfs.origins.pool import OriginPool, RetryPolicy
from musicfs.origins.urls import OriginConfigError, OriginURLError

log = logging.getLogger(__name__)

# A catalog of at least this many tracks is planned in a child process
# (``publish_process``); a smaller one takes less than a starting interpreter does.
PROCESS_PUBLISH_MIN = 5000


def open_pool(settings: Settings) -> OriginPool:
    """The configured origins, best first (``priority``, then order in the config)."""
    t = settings.timeouts
    ordered = sorted(settings.origins, key=lambda o: o.priority)  # stable: file order
    origins = []
    for o in ordered:
        try:
            origins.append(open_origin(o.url, o.name, settings=o, timeouts=t))
        except (OriginURLError, OriginConfigError) as exc:
            raise ConfigError(f"{o.name}: {exc}", file=settings.source, key="origin") from None
    return OriginPool(
        origins,
        health=HealthPolicy(
            interval=t.health_interval, check_timeout=t.operation, max_backoff=t.health_max_backoff
        ),
        read_deadline=settings.fuse.read_deadline,
        operation_timeout=t.operation,
        retry=RetryPolicy(hedge_after=t.hedge_after),
    )


class SyncCoordinator:
    """Coordinates syncs of the origins into the catalog and builds the tree the FUSE
    layer serves from it; keeps the sync progress and errors that status reports."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        pool: OriginPool,
        *,
        process_publish_min: int = PROCESS_PUBLISH_MIN,
    ):
        self.settings = settings
        self.process_publish_min = process_publish_min
        self.catalog = catalog
        self.pool = pool
        self.template = Template(settings.library.template)
        self.generation = 0
        self.last_sync: dict[str, SyncResult] = {}
        self.sync_errors: dict[str, str] = {}
        # What the sync in progress is doing, for status: origin, files done / to scan.
        self.progress: dict[str, object] | None = None
        self.syncs_finished = 0
        # The daemon's caching reader: remote tag reads go through it and stay cached.
        self.tag_reader: ReadTrack | None = None
        # The catalog or the naming template changed since the last tree was built. A sync
        # that changed nothing leaves it false, and nothing is republished: no new
        # generation, no search index diff -- however short ``scan_interval`` is.
        self.tree_stale = False

    def set_template(self, template: str) -> None:
        self.template = Template(template)
        self.tree_stale = True

    def _catalog_changed(self) -> None:
        self.tree_stale = True

    def _publish(self) -> ServedTree:
        """Plan the tree of the catalog as it is now and publish it (one transaction that
        writes only the rows that changed)."""
        fail_point("tree.build")
        # Cleared before reading: a commit that lands meanwhile marks it stale again.
        self.tree_stale = False
        try:
            state = self._plan_and_publish()
        except BaseException:
            self.tree_stale = True  # not published: the next pass tries again
            raise
        self.generation = state.generation
        return ServedTree(self.catalog, state)

    def _plan_and_publish(self) -> TreeState:
        if self.catalog.track_count() < self.process_publish_min:
            return publish_state(self.catalog, self.template)
        started = time.monotonic()
        try:
            done = publish_in_child(self.catalog, self.template)
        except PublishFailed:
            raise
        except OSError as exc:
            # No process to be had (process or memory limits): plan here rather than not
            # at all.
            log.warning("tree: cannot start the publisher process (%s); planning in-process", exc)
            return publish_state(self.catalog, self.template)
        log.info(
            "tree: planned in a child process in %.1fs (its peak RSS %.0f MiB)",
            time.monotonic() - started,
            done.peak_rss_kib / 1024,
        )
        return done.state

    def _open_tree(self) -> ServedTree:
        """The tree published last, served at once; planned again later if the catalog
        or the template changed since. Published now if there is none yet."""
        state = self.catalog.tree_state()
        if state.generation == 0:
            return self._publish()
        if (
            state.template != self.template.source
            or state.catalog_version != self.catalog.catalog_version()
        ):
            self.tree_stale = True
        self.generation = state.generation
        return ServedTree(self.catalog, state)

    async def build_tree(self) -> ServedTree:
        """Publish the catalog's tree now."""
        return await self.catalog.run(self._publish)

    async def open_tree(self) -> ServedTree:
        return await self.catalog.run(self._open_tree)

    async def sync(
        self,
        *,
        progress: Progress | None = None,
        on_batch: Callable[[], None] | None = None,
        prune: bool = False,
    ) -> bool:
        """Sync every origin once. True if every origin listed completely and every file
        that needed reading could be read. ``on_batch`` is called after every commit that
        changed the catalog (and marks the tree stale)."""

        def changed() -> None:
            self._catalog_changed()
            if on_batch is not None:
                on_batch()

        ok = True
        try:
            for origin in list(self.pool):
                if not self.pool.health.usable(origin.name):
                    # Listing a dead server would only wait for timeouts; the catalog is
                    # kept and the next sync after it recovers catches up.
                    ok = False
                    self.sync_errors[origin.name] = "origin unhealthy; sync skipped"
                    log.warning("sync: origin=%s is unhealthy; skipped, catalog kept", origin.name)
                    continue

                def track(done: int, total: int, origin: str = origin.name) -> None:
                    self.progress = {"origin": origin, "done": done, "total": total}
                    if progress is not None:
                        progress(done, total)

                self.progress = {"origin": origin.name, "done": 0, "total": None}
                try:
                    result = await sync_origin(
                        self.catalog,
                        origin,
                        batch_size=self.settings.library.scan_batch,
                        parallel=self.settings.library.scan_parallel,
                        progress=track,
                        on_batch=changed,
                        read_track=self.tag_reader,
                        prune=prune,
                    )
                except OriginError as exc:
                    ok = False
                    self.sync_errors[origin.name] = str(exc)
                    log.warning("sync: %s; catalog kept as it was", exc)
                    continue
                except (OSError, apsw.FullError, apsw.IOError) as exc:
                    # The state disk is full or failing: batches committed so far stay, the
                    # rest is retried at the next sync instead of ending syncing for good.
                    ok = False
                    self.sync_errors[origin.name] = f"catalog write failed: {exc}"
                    log.error(
                        "sync: origin=%s: catalog write failed (%s); committed batches kept, "
                        "retrying later",
                        origin.name,
                        exc,
                    )
                    continue
                self.sync_errors.pop(origin.name, None)
                self.last_sync[origin.name] = result
                if result.skipped:
                    ok = False  # files that could not be read now: retry soon, not in hours
                if result.withheld:
                    ok = False  # the disk may be mounted again soon: look again soon
                    self.sync_errors[origin.name] = (
                        f"listed {result.listed} files; {result.withheld} tracks kept that "
                        "it no longer lists (`musicfs scan --prune` removes them)"
                    )
        finally:
            self.progress = None
        self.syncs_finished += 1
        return ok

    def status(self) -> dict[str, object]:
        return {
            "running": self.progress,
            "finished": self.syncs_finished,
            "errors": dict(self.sync_errors),
            "last": {
                name: {
                    "listed": r.listed,
                    "scanned": r.added_or_changed,
                    "removed": r.removed,
                    "withheld": r.withheld,
                    "tag_errors": r.tag_errors,
                    "skipped": r.skipped,
                    "seconds": round(r.seconds, 3),
                }
                for name, r in self.last_sync.items()
            },
        }


class TreePublisher:
    """Rebuilds the tree while and after syncs -- only when the catalog or the template
    changed (``SyncCoordinator.tree_stale``), and at most every ``min_interval`` seconds
    mid-sync."""

    def __init__(
        self,
        library: SyncCoordinator,
        publish: Callable[[ServedTree], object],
        min_interval: float = 5.0,
    ):
        self.library = library
        self.publish = publish
        self.min_interval = min_interval
        self._last = 0.0

    async def maybe_publish(self, final: bool = False) -> bool:
        """Publish a new tree if anything changed (mid-sync: not sooner than
        ``min_interval`` after the last one). True if one was published."""
        now = time.monotonic()
        if not self.library.tree_stale or (not final and now - self._last < self.min_interval):
            return False
        self._last = now
        tree = await self.library.build_tree()
        self.publish(tree)
        log.info(
            "tree: generation %d with %d tracks published",
            tree.generation,
            tree.file_count,
        )
        return True

    async def run_while(self, sync: Callable[[], object]) -> bool:
        """Publish periodically while ``sync`` runs, then once more at the end if anything
        changed. True if a tree was published."""
        published = False
        async with trio.open_nursery() as nursery:

            async def ticker() -> None:
                nonlocal published
                while True:
                    await trio.sleep(self.min_interval)
                    published |= await self.maybe_publish()

            nursery.start_soon(ticker)
            await sync()  # type: ignore[misc]
            nursery.cancel_scope.cancel()
        published |= await self.maybe_publish(final=True)
        if not published:
            log.info("tree: generation %d kept (the sync changed nothing)", self.library.generation)
        return published
