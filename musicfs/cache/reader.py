"""The reader seam: FUSE ``read()`` asks a ``Reader`` for bytes of a track, and nothing
else in the FUSE layer knows where the bytes come from.

``CachingReader`` serves reads from the chunk store and fetches what is missing through
``Fetch`` (``OriginPool.read``), one chunk-sized range at a time:

* a chunk read from disk is verified against its hash every time; one that fails is
  quarantined by the store and fetched again -- the player never sees the bad bytes;
* recently used chunks stay in a small in-memory cache (default 16 MiB), because FUSE
  asks in 128 KiB pieces and re-reading and re-hashing a 1 MiB chunk for each of its
  eight pieces would cost 8x the disk reads and hashing;
* concurrent reads of the same missing chunk share one fetch (single flight);
* sequential reads start a bounded read-ahead of the next chunks in the background --
  fetched from the origin if missing, read and verified from disk if cached;
* fetched chunks are written to the store in the background (write-behind), so a miss
  costs one origin round trip, not an origin round trip plus an fsync; what queues up
  while one batch is written is stored as the next batch, with one index commit;
* a slow or hung cache disk is given ``store_deadline`` before the origin is asked;
* in passthrough mode (unusable cache) reads go straight to the origin and the store is
  retried every ``retry_interval`` seconds -- unless the cache can still be read (it only
  stopped taking writes): then the chunks already stored are still served, verified, and
  only the rest comes from the origin (see ``readonly.py``).
"""

from __future__ import annotations

import errno
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import trio

from musicfs.cache.modes import CacheMode
from musicfs.cache.settings import CacheSettings
from musicfs.cache.space import HIGH_WATERMARK
from musicfs.cache.store import ChunkStore, PutResult, Rejected, StoreStatistics
from musicfs.catalog.model import Track
from musicfs.failpoints import async_fail_point
from musicfs.resources import describe, shortage
from musicfs.statistics import snapshot

log = logging.getLogger(__name__)

# Fetch bytes of a track from wherever it is stored (``OriginPool.read``).
Fetch = Callable[[Track, int, int], Awaitable[bytes]]


class Reader(Protocol):
    async def read(self, track: Track, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of ``track`` (short only at its end).
        Raises ``OSError`` with the errno the player should see."""
        ...

    async def aclose(self) -> None: ...


class DirectReader:
    """Reads straight from the origins, no caching."""

    def __init__(self, fetch: Fetch):
        self.fetch = fetch

    async def read(self, track: Track, offset: int, size: int) -> bytes:
        if offset >= track.size:
            return b""
        return await self.fetch(track, offset, min(size, track.size - offset))

    async def aclose(self) -> None:
        return None


@dataclass
class ReaderCounters:
    reads: int = 0
    memory_hits: int = 0
    store_hits: int = 0
    origin_fetches: int = 0
    origin_bytes: int = 0
    shared_fetches: int = 0  # reads that waited for another read's fetch
    readahead: int = 0
    repaired: int = 0
    uncached: int = 0  # chunks served but not stored (full, busy or short)
    passthrough_reads: int = 0
    store_timeouts: int = 0
    store_task_errors: int = 0


@dataclass(frozen=True)
class ReaderStatistics:
    memory_bytes: int  # verified chunks held in RAM
    disk_stalled: bool  # the cache disk is not answering in time: origins are asked
    counters: ReaderCounters
    store: StoreStatistics


class _Flight:
    """One fetch of one chunk that every concurrent reader of that chunk waits for."""

    __slots__ = ("data", "done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None


ChunkKey = tuple[bytes, int]

STALLED_STORE_WAIT = 0.25  # per chunk, while the cache disk is not answering in time
PLAYED_MEMORY = 4096  # chunk keys remembered as played (to promote each once)


class _Skipped:
    """``_from_store``'s answer when it gave a stalled cache disk only the short wait."""


_SKIPPED = _Skipped()


class CachingReader:
    def __init__(
        self,
        store: ChunkStore,
        fetch: Fetch,
        *,
        readahead: int = 2,
        readahead_after: int = 256 * 1024,
        memory_bytes: int = 16 * 1024 * 1024,
        retry_interval: float = 30.0,
        maintain_interval: float = 10.0,
        store_deadline: float = 2.0,
        threads: int = 4,
        max_pending_bytes: int = 8 * 1024 * 1024,
        drain_timeout: float = 5.0,
        put_wait: float = 1.0,
    ):
        self.store = store
        self.fetch = fetch
        self.readahead = readahead
        self.readahead_after = readahead_after
        self.memory_bytes = memory_bytes
        self.retry_interval = retry_interval
        self.maintain_interval = maintain_interval
        self.store_deadline = store_deadline
        # Set when a chunk read missed store_deadline: the cache disk is hung or dying.
        # Until it answers in time again each chunk gets only STALLED_STORE_WAIT before
        # the origin is asked, so a player stalls once, not on every chunk.
        self._store_stalled = False
        self.max_pending_bytes = max_pending_bytes
        self.drain_timeout = drain_timeout
        self.put_wait = put_wait
        self._put_scopes: set[trio.CancelScope] = set()
        self.counters = ReaderCounters()
        # Threads may be abandoned when the cache disk hangs; the limiter bounds how many.
        self._get_limiter = trio.CapacityLimiter(threads)
        self._put_limiter = trio.CapacityLimiter(1)
        self._memory: OrderedDict[ChunkKey, bytes] = OrderedDict()
        self._memory_used = 0
        self._flights: dict[ChunkKey, _Flight] = {}
        # version -> (end of the last read, bytes read sequentially up to it)
        self._streams: OrderedDict[bytes, tuple[int, int]] = OrderedDict()
        # Write-behind: fetched chunks queue here and one task stores them in batches.
        self._put_queue: list[tuple[bytes, int, bytes]] = []
        # Chunks seen played (a sequential run): promoted to the eviction policy's
        # protected segment once stored (``policy.py``), by the write-behind task so a
        # promotion never overtakes the write of its chunk.
        self._played: OrderedDict[ChunkKey, None] = OrderedDict()
        self._promote_queue: list[ChunkKey] = []
        self._put_pending = 0  # bytes queued or being written
        self._put_progress = trio.Event()  # set (and replaced) after every batch
        self._writing = False
        self._drain_until: float | None = None
        self._pending_readahead = 0
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._last_probe = 0.0

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store and run its start-up repair in a worker thread. Never raises
        for a bad cache: the store ends up in passthrough mode instead."""
        await trio.to_thread.run_sync(self.store.open)
        self._last_probe = time.monotonic()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Background work: write-behind, read-ahead, eviction, passthrough retries.
        Without it reads still work, storing inline and reading ahead nothing."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._housekeeping)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    # Shutting down: chunks already fetched still get stored, for a while.
                    self._drain_until = trio.current_time() + self.drain_timeout
                    for scope in self._put_scopes:
                        scope.deadline = min(scope.deadline, self._drain_until)
        finally:
            self._nursery = None

    async def aclose(self) -> None:
        await trio.to_thread.run_sync(self.store.close)

    async def reconfigure(self, settings: CacheSettings) -> None:
        """A reload: new size limits apply at once, eviction catches up in the background
        (``cache.chunk_size`` is restart-only, see ``service/reload.py``)."""
        self.store.max_size = settings.max_size
        self.store.min_free = settings.min_free
        self.memory_bytes = settings.memory
        self.retry_interval = settings.retry_interval
        self._wake.set()

    async def _housekeeping(self) -> None:
        while True:
            with trio.move_on_after(self.maintain_interval):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                if self.store.mode is CacheMode.PASSTHROUGH:
                    if time.monotonic() - self._last_probe >= self.retry_interval:
                        self._last_probe = time.monotonic()
                        await trio.to_thread.run_sync(self.store.probe)
                else:
                    await trio.to_thread.run_sync(self.store.maintain)
            except Exception:
                log.exception("cache: housekeeping failed; retrying later")

    # -- status ----------------------------------------------------------------------

    def statistics(self) -> ReaderStatistics:
        return ReaderStatistics(
            memory_bytes=self._memory_used,
            disk_stalled=self._store_stalled,
            counters=snapshot(self.counters),
            store=self.store.statistics(),
        )

    def status(self) -> dict[str, Any]:
        """The store's report with the reader's beside it (``musicfs status``)."""
        stats = self.statistics()
        return {
            **self.store.status(),
            "reader": asdict(stats.counters),
            "memory_bytes": stats.memory_bytes,
            "disk_stalled": stats.disk_stalled,
        }

    # -- reads -----------------------------------------------------------------------

    async def read(self, track: Track, offset: int, size: int) -> bytes:
        if offset < 0:
            raise OSError(errno.EINVAL, f"negative offset {offset}")
        if offset >= track.size or size <= 0:
            return b""
        end = min(offset + size, track.size)
        self.counters.reads += 1
        if self.store.mode is CacheMode.PASSTHROUGH:
            self.counters.passthrough_reads += 1
            if not self.store.serves_cached:
                return await self.fetch(track, offset, end - offset)
        cs = self.store.chunk_size
        first, last = offset // cs, (end - 1) // cs
        parts: list[bytes] = []
        for n in range(first, last + 1):
            data = await self._chunk(track, n)
            base = n * cs
            parts.append(data[max(offset, base) - base : min(end, base + cs) - base])
            if len(data) < min(cs, track.size - base):
                break  # the origin returned less than the catalog promised
        self._note_stream(track, offset, end, last)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def warm(self, track: Track, n: int) -> None:
        """Make sure chunk ``n`` of ``track`` is fetched, verified and queued for the store
        like any read's -- but without counting as a stream, so it starts no read-ahead
        or prefetch (pins pace their own fetching, ``musicfs/pins.py``)."""
        if n * self.store.chunk_size < track.size:
            await self._chunk(track, n)

    async def _chunk(self, track: Track, n: int) -> bytes:
        key = (track.version_key, n)
        data = self._memory.get(key)
        if data is not None:
            self._memory.move_to_end(key)
            self.counters.memory_hits += 1
            return data
        flight = self._flights.get(key)
        if flight is None:
            flight = self._start_flight(track, n, key)
            if self._nursery is None:
                await self._load(track, n, key, flight)
        else:
            self.counters.shared_fetches += 1
        await flight.done.wait()
        if flight.error is not None:
            err = flight.error
            if isinstance(err, OSError):
                raise OSError(err.errno, err.strerror or str(err)) from err
            short = shortage(err)
            if short is not None:
                raise short from err
            raise OSError(errno.EIO, f"chunk fetch failed: {describe(err)}") from err
        assert flight.data is not None
        return flight.data

    def _start_flight(self, track: Track, n: int, key: ChunkKey) -> _Flight:
        flight = _Flight()
        self._flights[key] = flight
        if self._nursery is not None:
            # The fetch outlives the read that started it: a read that hits its deadline
            # does not waste the fetch, and the others waiting for it still get it.
            self._nursery.start_soon(self._load, track, n, key, flight)
        return flight

    async def _load(self, track: Track, n: int, key: ChunkKey, flight: _Flight) -> None:
        try:
            flight.data = await self._load_chunk(track, n, key)
        except BaseException as exc:
            flight.error = exc if isinstance(exc, Exception) else OSError(errno.EIO, "cancelled")
            if not isinstance(exc, Exception):
                raise
        finally:
            flight.done.set()
            self._flights.pop(key, None)

    async def _load_chunk(self, track: Track, n: int, key: ChunkKey) -> bytes:
        cs = self.store.chunk_size
        expected = min(cs, track.size - n * cs)
        found = await self._from_store(track, n, expected)
        if isinstance(found, bytes):
            self.counters.store_hits += 1
            self._remember(key, found)
            return found
        await async_fail_point("reader.fetch")
        try:
            data = await self.fetch(track, n * cs, expected)
        except Exception:
            if found is not _SKIPPED:
                raise
            # The origin cannot help either: give the stalled cache disk its full time
            # after all -- a slow disk still beats an EIO.
            again = await self._from_store(track, n, expected, patient=True)
            if not isinstance(again, bytes):
                raise
            self.counters.store_hits += 1
            self._remember(key, again)
            return again
        self.counters.origin_fetches += 1
        self.counters.origin_bytes += len(data)
        if isinstance(found, Rejected):
            self.counters.repaired += 1
            log.warning(
                "cache: %r chunk %d repaired: served %s from the origin (%s)",
                track.path,
                n,
                "(not re-stored: read-only cache)" if self.store.serves_cached else "and re-stored",
                found.problem,
            )
        if len(data) != expected:
            # Never cache a chunk of the wrong length: the origin's file is not the
            # version the catalog knows. The short read is passed on as it is.
            self.counters.uncached += 1
            return data
        self._remember(key, data)
        await self._store(track.version_key, n, data)
        return data

    async def _from_store(
        self, track: Track, n: int, expected: int, *, patient: bool = False
    ) -> bytes | Rejected | _Skipped | None:
        """The stored chunk, a rejected one, or None: not stored, or the store failed or
        did not answer in time (``_SKIPPED`` when that was the short wait of a stalled
        cache disk)."""
        stalled = self._store_stalled and not patient
        with trio.move_on_after(STALLED_STORE_WAIT if stalled else self.store_deadline):
            try:
                found = await trio.to_thread.run_sync(
                    lambda: self.store.get(track.version_key, n, expected, label=track.path),
                    limiter=self._get_limiter,
                    abandon_on_cancel=True,
                )
                if self._store_stalled:
                    self._store_stalled = False
                    log.warning("cache: the cache disk answers in time again")
                return found
            except Exception as exc:
                # Neither a bug in the cache nor this process running short of memory or
                # threads may cost the player a read the origin can serve.
                self.counters.store_task_errors += 1
                short = shortage(exc)
                if short is not None:
                    log.warning(
                        "cache: reading %r chunk %d: %s; asking the origin",
                        track.path,
                        n,
                        short.strerror,
                    )
                else:
                    log.exception(
                        "cache: reading %r chunk %d failed unexpectedly; asking the origin",
                        track.path,
                        n,
                    )
                return None
        self.counters.store_timeouts += 1
        if stalled:
            return _SKIPPED
        if not self._store_stalled:
            self._store_stalled = True
            log.warning(
                "cache: reading %r chunk %d took over %.1fs; asking the origin instead, and "
                "giving the cache disk %.2fs a chunk until it answers in time again",
                track.path,
                n,
                self.store_deadline,
                STALLED_STORE_WAIT,
            )
        return None

    def _remember(self, key: ChunkKey, data: bytes) -> None:
        if self.memory_bytes <= 0:
            return  # cache.memory = 0: every read goes to the store (the bench compares)
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_used -= len(old)
        self._memory[key] = data
        self._memory_used += len(data)
        while self._memory_used > self.memory_bytes and len(self._memory) > 1:
            _, dropped = self._memory.popitem(last=False)
            self._memory_used -= len(dropped)

    # -- storing ---------------------------------------------------------------------

    async def _store(self, version: bytes, n: int, data: bytes) -> None:
        if self.store.mode is CacheMode.PASSTHROUGH:
            self.counters.uncached += 1
            return
        if self._nursery is None:
            await self._put_batch([(version, n, data)])
            return
        # Back-pressure: a reader outrunning the cache disk waits for room in the queue
        # (``max_pending_bytes`` bounds the memory it holds), but only briefly -- if the
        # disk is that slow, serve now and store next time.
        with trio.move_on_after(self.put_wait):
            while self._put_pending and self._put_pending + len(data) > self.max_pending_bytes:
                await self._put_progress.wait()
            self._put_queue.append((version, n, data))
            self._put_pending += len(data)
            if not self._writing:
                self._writing = True
                self._nursery.start_soon(self._write_behind)
            return
        self.counters.uncached += 1

    async def _write_behind(self) -> None:
        """Store queued chunks until the queue is empty. Each batch is whatever queued up
        while the previous one was being written, stored with one index commit: a folder
        of small tracks costs a few disk flushes per batch, not four per track."""
        try:
            while self._put_queue or self._promote_queue:
                batch, self._put_queue = self._put_queue, []
                try:
                    if batch:
                        await self._put_batch(batch)
                finally:
                    self._put_pending -= sum(len(data) for _, _, data in batch)
                    self._put_progress.set()
                    self._put_progress = trio.Event()
                played = [(v, n) for v, n, _ in batch if (v, n) in self._played]
                promote, self._promote_queue = played + self._promote_queue, []
                if promote:
                    await self._promote(promote)
        finally:
            self._writing = False

    async def _promote(self, keys: list[ChunkKey]) -> None:
        # Shielded like a batch of writes: the queue behind it gets its drain time too.
        scope = self._drain_scope()
        try:
            with scope:
                await trio.to_thread.run_sync(self.store.promote, keys, limiter=self._put_limiter)
        except Exception as exc:  # protection is advisory: the bytes are all still there
            log.warning("cache: cannot mark %d played chunks protected: %s", len(keys), exc)
        finally:
            self._put_scopes.discard(scope)

    def _drain_scope(self) -> trio.CancelScope:
        """Shielded: shutdown gives queued writes ``drain_timeout`` to finish (see ``run``);
        work started during the drain gets what is left of it. Discard it from
        ``_put_scopes`` when done."""
        scope = trio.CancelScope(shield=True)
        if self._drain_until is not None:
            scope.deadline = self._drain_until
        self._put_scopes.add(scope)
        return scope

    def _note_played(self, version: bytes, first: int, last: int) -> None:
        fresh = False
        for n in range(first, last + 1):
            key = (version, n)
            if key in self._played:
                self._played.move_to_end(key)
                continue
            self._played[key] = None
            self._promote_queue.append(key)
            fresh = True
        while len(self._played) > PLAYED_MEMORY:
            self._played.popitem(last=False)
        if fresh and self._nursery is not None and not self._writing:
            self._writing = True
            self._nursery.start_soon(self._write_behind)

    async def _put_batch(self, batch: list[tuple[bytes, int, bytes]]) -> None:
        scope = self._drain_scope()
        try:
            with scope:
                results = await trio.to_thread.run_sync(
                    self.store.put_many, batch, limiter=self._put_limiter
                )
            if scope.cancelled_caught:
                return
            self.counters.uncached += sum(
                result in (PutResult.FULL, PutResult.SKIPPED) for result in results
            )
            if self.store.used > self.store.max_size * HIGH_WATERMARK:
                self._wake.set()
        except Exception as exc:
            # A bug in the store must not cost the player the bytes it already has.
            self.counters.store_task_errors += 1
            short = shortage(exc)
            if short is not None:
                log.warning("cache: %d chunks left unstored: %s", len(batch), short.strerror)
            else:
                log.exception("cache: storing %d chunks failed unexpectedly", len(batch))
        finally:
            self._put_scopes.discard(scope)

    # -- read-ahead ------------------------------------------------------------------

    def _note_stream(self, track: Track, offset: int, end: int, last: int) -> None:
        version = track.version_key
        previous_end, streak = self._streams.pop(version, (-1, 0))
        streak = streak + (end - offset) if previous_end == offset else end - offset
        self._streams[version] = (end, streak)
        if len(self._streams) > 256:
            self._streams.popitem(last=False)
        # Playback, not a tag parser nibbling at a header (sync reads tags through here):
        # only a run of ``readahead_after`` sequential bytes starts read-ahead.
        if streak < self.readahead_after or self._nursery is None:
            return
        cs = self.store.chunk_size
        self._note_played(version, (end - streak) // cs, last)  # the whole run was played
        if self.readahead <= 0:
            return
        for n in range(last + 1, last + 1 + self.readahead):
            if n * cs >= track.size:
                break
            key = (version, n)
            if key in self._memory or key in self._flights:
                continue
            if self._pending_readahead >= 2 * self.readahead:
                break
            self._pending_readahead += 1
            self._nursery.start_soon(self._read_ahead, track, n, key)

    async def _read_ahead(self, track: Track, n: int, key: ChunkKey) -> None:
        try:
            if self.memory_bytes <= 0:
                # Nowhere to keep a verified chunk: only fetch what the cache lacks.
                has = await trio.to_thread.run_sync(
                    self.store.has, track.version_key, n, limiter=self._get_limiter
                )
                if has:
                    return
            if key in self._flights or key in self._memory:
                return
            # A cached chunk is read and verified ahead too: its hashing then overlaps
            # with serving the current chunk instead of stalling the next read.
            self.counters.readahead += 1
            self._note_played(track.version_key, n, n)
            flight = _Flight()
            self._flights[key] = flight
            await self._load(track, n, key, flight)
        except Exception as exc:
            log.info("cache: read-ahead of %r chunk %d failed: %s", track.path, n, exc)
        finally:
            self._pending_readahead -= 1
