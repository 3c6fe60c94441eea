"""Write-behind: chunks the reader fetched are stored in the background, so a miss costs
one origin round trip, not an origin round trip plus an fsync.

* what queues up while one batch is written is stored as the next batch, with one index
  commit (``ChunkStore.put_many``): a folder of small tracks costs a few disk flushes per
  batch, not four per track;
* back-pressure: a reader outrunning the cache disk waits for room in the queue
  (``max_pending_bytes`` bounds the memory it holds), but only ``put_wait`` -- if the disk
  is that slow, the chunk is served and stored another time;
* chunks seen played are promoted to the eviction policy's protected segment once stored
  (``policy.py``), by the same task, so a promotion never overtakes the write of its chunk;
  chunks fetched *ahead* of a player (read-ahead, prefetch of the next track) enter it as
  its least valuable until the player reaches them: a guess about what comes next must
  not push out what was actually played;
* a chunk queued or being written is still served from here (``unstored``): one
  fetched ahead into the store only (prefetch), or dropped from the memory cache before
  the player reached it, is not fetched from the origin again while the disk catches up;
* on shutdown, queued writes get ``drain_timeout`` to finish (``begin_drain``): the store
  is crash-consistent without them, they only save fetching the chunks again.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Protocol

import trio

from musicfs.cache.modes import CacheMode
from musicfs.cache.space import HIGH_WATERMARK
from musicfs.cache.store import ChunkStore, PutResult
from musicfs.resources import shortage

log = logging.getLogger(__name__)

ChunkKey = tuple[bytes, int]
PLAYED_MEMORY = 4096  # chunk keys remembered as played (to promote each once)


class StoreCounts(Protocol):
    uncached: int  # chunks served but not stored (full, busy or short)
    store_task_errors: int


class WriteBehind:
    def __init__(
        self,
        store: ChunkStore,
        counters: StoreCounts,
        *,
        max_pending_bytes: int,
        put_wait: float,
        on_high_water: Callable[[], None] | None = None,
    ):
        self.store = store
        self.counters = counters
        self.max_pending_bytes = max_pending_bytes
        self.put_wait = put_wait
        self.on_high_water = on_high_water  # the store passed its high watermark
        self.nursery: trio.Nursery | None = None  # the owner's background nursery
        self.limiter = trio.CapacityLimiter(1)  # batches are written one after another
        self.queue: list[tuple[bytes, int, bytes]] = []
        self._unstored: dict[ChunkKey, bytes] = {}  # what is queued or being written
        self.pending = 0  # bytes queued or being written
        self.waiting = 0  # bytes of chunks waiting for room in the queue
        self.progress = trio.Event()  # set (and replaced) after every batch
        self.writing = False
        # chunk key -> True while it was only fetched ahead of a player, not yet played
        self.played: OrderedDict[ChunkKey, bool] = OrderedDict()
        self.promote_queue: list[tuple[ChunkKey, bool]] = []  # (key, ahead)
        self._drain_until: float | None = None
        self._scopes: set[trio.CancelScope] = set()

    def begin_drain(self, drain_timeout: float) -> None:
        """Shutting down: what is queued or being written gets ``drain_timeout`` more."""
        self._drain_until = trio.current_time() + drain_timeout
        for scope in self._scopes:
            scope.deadline = min(scope.deadline, self._drain_until)

    async def put(self, version: bytes, n: int, data: bytes, *, patient: bool = False) -> None:
        """Queue chunk ``n`` of ``version`` for the store (inline without a nursery).
        ``patient``: wait for room in the queue as long as it takes."""
        if self.store.mode is CacheMode.PASSTHROUGH:
            self.counters.uncached += 1
            return
        if self.nursery is None:
            await self._put_batch([(version, n, data)])
            return
        with trio.move_on_after(math.inf if patient else self.put_wait):
            while self.pending and self.pending + len(data) > self.max_pending_bytes:
                self.waiting += len(data)
                try:
                    await self.progress.wait()
                finally:
                    self.waiting -= len(data)
            self.queue.append((version, n, data))
            self._unstored[version, n] = data
            self.pending += len(data)
            self.kick()
            return
        self.counters.uncached += 1

    def unstored(self, key: ChunkKey) -> bytes | None:
        """The bytes of chunk (or piece) ``key`` if they are queued or being written: the
        same verified bytes the memory cache would hold."""
        return self._unstored.get(key)

    def note_played(self, version: bytes, first: int, last: int, *, ahead: bool = False) -> None:
        """Chunks ``first..last`` of ``version`` were played (``ahead``: fetched for a
        player that has not reached them yet): promote each once stored."""
        self.protect([(version, n) for n in range(first, last + 1)], ahead=ahead)

    def protect(self, keys: list[ChunkKey], *, again: bool = False, ahead: bool = False) -> None:
        """Move these chunks (or pieces) to the protected segment once stored (``again``:
        even those already marked, as tag reads ask for every time; ``ahead``: at its
        least recently used end, see the module's docstring)."""
        fresh = False
        for key in keys:
            known = self.played.get(key)
            if known is not None and not again and (ahead or not known):
                self.played.move_to_end(key)
                continue  # already promoted as this (or better)
            self.played[key] = ahead
            self.played.move_to_end(key)
            self.promote_queue.append((key, ahead))
            fresh = True
        while len(self.played) > PLAYED_MEMORY:
            self.played.popitem(last=False)
        if fresh:
            self.kick()

    def kick(self) -> None:
        if self.nursery is not None and not self.writing:
            self.writing = True
            self.nursery.start_soon(self._write)

    async def _write(self) -> None:
        """Store queued chunks until the queue is empty, a batch at a time."""
        try:
            while self.queue or self.promote_queue:
                batch, self.queue = self.queue, []
                try:
                    if batch:
                        await self._put_batch(batch)
                finally:
                    self.pending -= sum(len(data) for _, _, data in batch)
                    for v, n, data in batch:
                        if self._unstored.get((v, n)) is data:
                            del self._unstored[v, n]
                    self.progress.set()
                    self.progress = trio.Event()
                # Those marked before they were stored could not be promoted then.
                played = [((v, n), self.played[v, n]) for v, n, _ in batch if (v, n) in self.played]
                promote, self.promote_queue = played + self.promote_queue, []
                for ahead in (True, False):  # the played last: they end up the most recent
                    keys = [key for key, was_ahead in promote if was_ahead is ahead]
                    if keys:
                        await self._promote(keys, ahead=ahead)
        finally:
            self.writing = False

    async def _promote(self, keys: list[ChunkKey], *, ahead: bool) -> None:
        # Shielded like a batch of writes: the queue behind it gets its drain time too.
        scope = self._drain_scope()
        try:
            with scope:
                await trio.to_thread.run_sync(
                    partial(self.store.promote, keys, ahead=ahead),
                    limiter=self.limiter,
                    abandon_on_cancel=True,
                )
        except Exception as exc:  # protection is advisory: the bytes are all still there
            log.warning("cache: cannot mark %d played chunks protected: %s", len(keys), exc)
        finally:
            self._scopes.discard(scope)

    def _drain_scope(self) -> trio.CancelScope:
        """Shielded: shutdown gives queued writes the drain time to finish; work started
        during the drain gets what is left of it. Discard it from ``_scopes`` when done."""
        scope = trio.CancelScope(shield=True)
        if self._drain_until is not None:
            scope.deadline = self._drain_until
        self._scopes.add(scope)
        return scope

    async def _put_batch(self, batch: list[tuple[bytes, int, bytes]]) -> None:
        scope = self._drain_scope()
        try:
            with scope:
                results = await trio.to_thread.run_sync(
                    self.store.put_many,
                    batch,
                    limiter=self.limiter,
                    abandon_on_cancel=True,  # when the drain time is up, on a hung disk
                )
            if scope.cancelled_caught:
                return
            self.counters.uncached += sum(
                result in (PutResult.FULL, PutResult.SKIPPED) for result in results
            )
            if self.store.used > self.store.max_size * HIGH_WATERMARK and self.on_high_water:
                self.on_high_water()
        except Exception as exc:
            # A bug in the store must not cost the player the bytes it already has.
            self.counters.store_task_errors += 1
            short = shortage(exc)
            if short is not None:
                log.warning("cache: %d chunks left unstored: %s", len(batch), short.strerror)
            else:
                log.exception("cache: storing %d chunks failed unexpectedly", len(batch))
        finally:
            self._scopes.discard(scope)
