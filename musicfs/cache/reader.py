"""The reader seam: FUSE ``read()`` asks a ``Reader`` for bytes of a track, and nothing
else in the FUSE layer knows where the bytes come from.

``CachingReader`` serves reads from the chunk store and fetches what is missing through
``Fetch`` (``OriginPool.read``). It holds the read path's contract and wires the parts
that keep it, each in its own module:

* every byte served is verified: a chunk read from disk is checked against its hash
  every time, and one that fails is fetched again -- the player never sees the bad bytes
  (``loads.py``, ``store_get.py``);
* recently used chunks stay in memory (``memory.py``); concurrent reads of the same
  missing chunk share one load (``flights.py``);
* a scanner's reads are served in pieces, a player's in whole chunks with a read-ahead
  window in front of it (``planner.py``, ``readahead.py``), and a playing track's rest and
  the next track are prefetched (``prefetch.py``); MusicFS's own tag reads keep the
  headers they read (``metadata_reads.py``);
* fetched chunks are stored in the background (``write_behind.py``), so a miss costs one
  origin round trip, not an origin round trip plus an fsync;
* a slow or hung cache disk is given ``store_deadline`` before the origin is asked
  (``store_lookup.py``);
* in passthrough mode (unusable cache) reads go straight to the origin and the store is
  retried every ``retry_interval`` seconds (``housekeeping.py``) -- unless the cache can
  still be read (it only stopped taking writes): then the chunks already stored are still
  served, verified, and only the rest comes from the origin (see ``readonly.py``).
"""

from __future__ import annotations

import errno
from dataclasses import asdict
from functools import partial
from typing import Any, Protocol

import trio

from musicfs.cache.background import Background
from musicfs.cache.flights import FlightTable
from musicfs.cache.housekeeping import Housekeeping
from musicfs.cache.loads import ChunkLoads
from musicfs.cache.memory import MemoryCache
from musicfs.cache.metadata_reads import METADATA_HANDLE, MetadataReads
from musicfs.cache.modes import CacheMode
from musicfs.cache.piece_fetch import Fetch, PieceFetcher
from musicfs.cache.planner import Cursor, Planner
from musicfs.cache.prefetch import NextTrack, Prefetcher
from musicfs.cache.read_parts import ReadParts
from musicfs.cache.readahead import ReadAhead
from musicfs.cache.reader_statistics import ReaderCounters, ReaderStatistics
from musicfs.cache.settings import CacheSettings
from musicfs.cache.store import ChunkStore
from musicfs.cache.store_lookup import StoreLookup
from musicfs.cache.write_behind import WriteBehind
from musicfs.catalog.model import Track
from musicfs.statistics import snapshot

# What callers of the reader import from here.
__all__ = ["CachingReader", "DirectReader", "Fetch", "Reader", "ReaderCounters", "ReaderStatistics"]


class Reader(Protocol):
    async def read(self, track: Track, offset: int, size: int, *, handle: object = None) -> bytes:
        """Bytes ``[offset, offset + size)`` of ``track`` (short only at its end), read
        through the file handle ``handle`` (each has its own cursor). Raises ``OSError``
        with the errno the player should see."""
        ...

    def closed(self, handle: object) -> None:
        """The file handle was released."""
        ...

    async def aclose(self) -> None: ...


class DirectReader:
    """Reads straight from the origins, no caching."""

    def __init__(self, fetch: Fetch):
        self.fetch = fetch

    async def read(self, track: Track, offset: int, size: int, *, handle: object = None) -> bytes:
        if offset >= track.size:
            return b""
        return await self.fetch(track, offset, min(size, track.size - offset))

    def closed(self, handle: object) -> None:
        return None

    async def aclose(self) -> None:
        return None


class CachingReader:
    def __init__(
        self,
        store: ChunkStore,
        fetch: Fetch,
        *,
        readahead: int = 8,
        # A library scanner reads a track's header in one run -- tags, the stream info and
        # an embedded cover, commonly 100-700 KiB -- so only a longer run is playback.
        readahead_after: int = 1024 * 1024,
        prefetch_after: int = 2 * 1024 * 1024,
        part_bytes: int = 512 * 1024,
        span_bytes: int = 4 * 1024 * 1024,
        memory_bytes: int = 16 * 1024 * 1024,
        retry_interval: float = 30.0,
        maintain_interval: float = 10.0,
        store_deadline: float = 2.0,
        threads: int = 4,
        max_pending_bytes: int = 8 * 1024 * 1024,
        drain_timeout: float = 5.0,
        put_wait: float = 1.0,
    ):
        self.counters = ReaderCounters()
        self.store = store
        self.readahead_after = readahead_after
        self.prefetch_after = prefetch_after
        self.drain_timeout = drain_timeout
        self.planner = Planner(
            chunk_size=store.chunk_size, stream_after=readahead_after, max_window=readahead
        )
        self.prefetch: Prefetcher | None = None
        self.housekeeping = Housekeeping(
            store, retry_interval=retry_interval, maintain_interval=maintain_interval
        )
        # The store is asked within store_deadline, in at most ``threads`` worker threads.
        self.lookup = StoreLookup(
            store,
            self.counters,
            deadline=store_deadline,
            threads=threads,
            piece=self.planner.piece,
        )
        self.write_behind = WriteBehind(
            store,
            self.counters,
            max_pending_bytes=max_pending_bytes,
            put_wait=put_wait,
            on_high_water=self.housekeeping.wake,
        )
        self.memory = MemoryCache(memory_bytes)
        self.flights = FlightTable()
        self.background = Background()
        self.fetcher = PieceFetcher(
            fetch,
            self.planner,
            self.memory,
            self.counters,
            part_bytes=part_bytes,
            span_bytes=span_bytes,
        )
        self.parts = ReadParts(
            store=store,
            lookup=self.lookup,
            fetcher=self.fetcher,
            write_behind=self.write_behind,
            memory=self.memory,
            flights=self.flights,
            background=self.background,
            planner=self.planner,
            counters=self.counters,
        )
        self.loads = ChunkLoads(self.parts)
        self.readahead = ReadAhead(self.parts, self.loads)
        self.metadata = MetadataReads(
            partial(self.read, handle=METADATA_HANDLE),
            self.write_behind,
            self.background,
            self.planner,
        )

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store and run its start-up repair in a worker thread. Never raises
        for a bad cache: the store ends up in passthrough mode instead."""
        await trio.to_thread.run_sync(self.store.open)
        self.housekeeping.opened()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Background work: write-behind, read-ahead, eviction, passthrough retries.
        Without it reads still work, storing inline and reading ahead nothing."""
        try:
            async with trio.open_nursery() as nursery:
                self.background.nursery = self.write_behind.nursery = nursery
                nursery.start_soon(self.housekeeping.run)
                if self.prefetch is not None:
                    await nursery.start(self.prefetch.run)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    # Shutting down: chunks already fetched still get stored, for a while.
                    self.write_behind.begin_drain(self.drain_timeout)
        finally:
            self.background.nursery = self.write_behind.nursery = None

    async def aclose(self) -> None:
        # Abandonable: a write stuck on a hung cache disk holds the store's lock, and the
        # process must still get to exit (the store is crash-consistent without a close).
        await trio.to_thread.run_sync(self.store.close, abandon_on_cancel=True)

    async def reconfigure(self, settings: CacheSettings) -> None:
        """A reload: new size limits apply at once, eviction catches up in the background
        (``cache.chunk_size`` is restart-only, see ``service/reload.py``)."""
        self.store.limits.max_size = settings.max_size
        self.store.limits.min_free = settings.min_free
        self.memory.budget = settings.memory
        self.housekeeping.retry_interval = settings.retry_interval
        self.housekeeping.wake()

    # -- status ----------------------------------------------------------------------

    def statistics(self) -> ReaderStatistics:
        return ReaderStatistics(
            memory_bytes=self.memory.used,
            disk_stalled=self.lookup.stalled,
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

    async def read(self, track: Track, offset: int, size: int, *, handle: object = None) -> bytes:
        if offset < 0:
            raise OSError(errno.EINVAL, f"negative offset {offset}")
        if offset >= track.size or size <= 0:
            return b""
        end = min(offset + size, track.size)
        self.counters.reads += 1
        if self.store.mode is CacheMode.PASSTHROUGH:
            self.counters.passthrough_reads += 1
            if not self.store.serves_cached:
                return await self.fetcher.fetch(track, offset, end - offset)
        cursor = self.planner.cursor(track.version_key, handle)
        if not self.planner.advance(cursor, offset, end) and self.prefetch is not None:
            self.prefetch.moved(track, handle)  # a seek: what was fetched ahead is moot
        streak = cursor.streak  # as of this read: concurrent reads move the cursor on
        streaming = self.planner.streaming(cursor) and handle is not METADATA_HANDLE
        if streaming:
            self.planner.ensure_window(cursor)
        cs = self.store.chunk_size
        first, last = offset // cs, (end - 1) // cs
        served: list[bytes] = []
        waited = False
        for n in range(first, last + 1):
            base = n * cs
            lo, hi = max(offset, base) - base, min(end, base + cs) - base
            data, fetched = await self.loads.range(track, n, lo, hi, whole=streaming)
            waited = waited or fetched
            served.append(data)
            if len(data) < hi - lo:
                break  # the origin returned less than the catalog promised
        if streaming:
            self._played(track, cursor, streak, offset, end, waited, handle)
        return served[0] if len(served) == 1 else b"".join(served)

    def _played(
        self,
        track: Track,
        cursor: Cursor,
        streak: int,
        offset: int,
        end: int,
        waited: bool,
        handle: object,
    ) -> None:
        """A streaming read of ``[offset, end)`` was served: protect what was played,
        read ahead, and prefetch once the run is long enough."""
        cs = self.store.chunk_size
        first, last = offset // cs, (end - 1) // cs
        run_start = (end - streak) // cs
        if streak - (end - offset) < self.readahead_after and run_start < first:
            # Streaming began past the chunks this run started in, which were read in
            # pieces: complete them, so what was played is stored whole.
            for n in range(run_start, first):
                key = (track.version_key, n)
                if not self.parts.busy(key) and self.background.running:
                    self.background.start_soon(self.loads.start_chunk, track, n)
        self.write_behind.note_played(track.version_key, run_start, last)
        if waited:
            self.planner.stalled(cursor)
        self.readahead.start(track, cursor, last)
        if self.prefetch is not None and streak >= self.prefetch_after:
            self.prefetch.playing(track, handle, end)

    async def warm(self, track: Track, n: int) -> None:
        """Make sure chunk ``n`` of ``track`` is fetched whole, verified and queued for the
        store like any read's -- but without counting as a stream, so it starts no
        read-ahead or prefetch (pins pace their own fetching, ``musicfs/pins/selection.py``)."""
        size = self.planner.chunk_len(track.size, n)
        if size > 0:
            await self.loads.range(track, n, 0, size, whole=True)

    async def read_metadata(self, track: Track, offset: int, size: int) -> bytes:
        """A read by MusicFS's own tag reader (``metadata_reads.py``)."""
        return await self.metadata.read(track, offset, size)

    # -- playback prefetch -------------------------------------------------------------

    def enable_prefetch(self, next_track: NextTrack | None = None, **kw: int) -> Prefetcher:
        """Fetch the rest of a track being played, then the next of its album
        (``prefetch.py``); runs under ``run``."""
        self.prefetch = Prefetcher(self.readahead, self.store.chunk_size, next_track, **kw)
        return self.prefetch

    def closed(self, handle: object) -> None:
        """A file handle was released: its cursor and its prefetch go."""
        self.planner.forget(handle)
        if self.prefetch is not None:
            self.prefetch.closed(handle)
