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
* fetched chunks are written to the store in the background (``write_behind.py``), so
  a miss costs one origin round trip, not an origin round trip plus an fsync;
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
from functools import partial
from typing import Any, Protocol

import trio

from musicfs.cache.modes import CacheMode
from musicfs.cache.planner import PIECE_BIT, Cursor, Planner, is_piece, piece_key
from musicfs.cache.prefetch import NextTrack, Prefetcher
from musicfs.cache.settings import CacheSettings
from musicfs.cache.store import ChunkStore, Rejected, StoreStatistics
from musicfs.cache.store_lookup import SKIPPED, Skipped, StoreLookup
from musicfs.cache.write_behind import PLAYED_MEMORY, WriteBehind
from musicfs.catalog.model import Track
from musicfs.failpoints import async_fail_point
from musicfs.resources import describe, shortage
from musicfs.statistics import snapshot

log = logging.getLogger(__name__)

# Fetch bytes of a track from wherever it is stored (``OriginPool.read``).
Fetch = Callable[[Track, int, int], Awaitable[bytes]]


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
    known_absent: int = 0  # store lookups skipped: the presence filter said "not stored"


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
# A span's chunks: chunk number -> (its flight, pieces known, pieces it fetches).
_SpanLoads = dict[int, tuple["_Flight", dict[int, "bytes | _Flight"], dict[int, "_Flight"]]]


async def _result(flight: _Flight) -> bytes:
    """The flight's bytes once it is done, or the OSError a player should see."""
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


def _fail(flights: list[_Flight], exc: BaseException) -> None:
    error = exc if isinstance(exc, Exception) else OSError(errno.EIO, "cancelled")
    for flight in flights:
        if not flight.done.is_set():
            flight.error = error
            flight.done.set()


# The cursor MusicFS's own tag reads use (``read_metadata``): never streaming.
_METADATA = object()
# How much of a track's head a scanner's probe reads: ffprobe (Jellyfin, Navidrome's
# ffmpeg, Plex) reads an MP3 or MP4 up to its first frames, ~128 KiB with a cover, and a
# FLAC's metadata plus ~260 KiB of frames (measured with strace on tracks with 1200x1200
# covers). The sync's first head read fetches this much, so a scan after it is cached.
_HEAD_REGION = {".flac": 384 * 1024, ".mp3": 192 * 1024}  # MP3: + the kernel's read-ahead
_DEFAULT_HEAD = 128 * 1024


def head_region(path: str) -> int:
    dot = path.rfind(".")
    return _HEAD_REGION.get(path[dot:].lower() if dot >= 0 else "", _DEFAULT_HEAD)


# Pieces of a track's head and tail that tag reads keep protected (see ``read_metadata``).
METADATA_BUDGET = 512 * 1024
METADATA_TAIL = 128 * 1024

READAHEAD_IN_FLIGHT = 2  # spans of chunks being read ahead at once, for all streams
SPAN_SECONDS = 0.5  # a read-ahead range is what the origin delivers in about this long


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
        self.store = store
        self.fetch = fetch
        self.readahead = readahead  # the largest read-ahead window, in chunks
        self.readahead_after = readahead_after
        self.prefetch_after = prefetch_after
        # Read-ahead fetches consecutive chunks in ranges of up to this size (``_load_span``).
        self.span_bytes = span_bytes
        self._origin_rate: float | None = None  # bytes/s of one origin request (span_limit)
        self.part_bytes = part_bytes  # a chunk is fetched in ranges of this size at once
        self.planner = Planner(
            chunk_size=store.chunk_size, stream_after=readahead_after, max_window=readahead
        )
        self.prefetch: Prefetcher | None = None
        self.memory_bytes = memory_bytes
        self.retry_interval = retry_interval
        self.maintain_interval = maintain_interval
        self.drain_timeout = drain_timeout
        self.counters = ReaderCounters()
        # The store is asked within store_deadline, in at most ``threads`` worker threads.
        self.lookup = StoreLookup(
            store,
            self.counters,
            deadline=store_deadline,
            threads=threads,
            piece=self.planner.piece,
        )
        self._memory: OrderedDict[ChunkKey, bytes] = OrderedDict()
        self._memory_used = 0
        self._flights: dict[ChunkKey, _Flight] = {}
        # Fetched chunks are stored in the background (``write_behind.py``).
        self.write_behind = WriteBehind(
            store,
            self.counters,
            max_pending_bytes=max_pending_bytes,
            put_wait=put_wait,
            on_high_water=lambda: self._wake.set(),
        )
        self._heads: OrderedDict[bytes, None] = OrderedDict()  # head regions fetched
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
                self._nursery = self.write_behind.nursery = nursery
                nursery.start_soon(self._housekeeping)
                if self.prefetch is not None:
                    await nursery.start(self.prefetch.run)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    # Shutting down: chunks already fetched still get stored, for a while.
                    self.write_behind.begin_drain(self.drain_timeout)
        finally:
            self._nursery = self.write_behind.nursery = None

    async def aclose(self) -> None:
        # Abandonable: a write stuck on a hung cache disk holds the store's lock, and the
        # process must still get to exit (the store is crash-consistent without a close).
        await trio.to_thread.run_sync(self.store.close, abandon_on_cancel=True)

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
                return await self.fetch(track, offset, end - offset)
        cursor = self.planner.cursor(track.version_key, handle)
        if not self.planner.advance(cursor, offset, end) and self.prefetch is not None:
            self.prefetch.moved(track, handle)  # a seek: what was fetched ahead is moot
        streak = cursor.streak  # as of this read: concurrent reads move the cursor on
        playing = self.planner.streaming(cursor) and handle is not _METADATA
        streaming = playing
        if streaming:
            self.planner.ensure_window(cursor)
        cs = self.store.chunk_size
        first, last = offset // cs, (end - 1) // cs
        parts: list[bytes] = []
        waited = False
        for n in range(first, last + 1):
            base = n * cs
            lo, hi = max(offset, base) - base, min(end, base + cs) - base
            data, fetched = await self._range(track, n, lo, hi, whole=streaming)
            waited = waited or fetched
            parts.append(data)
            if len(data) < hi - lo:
                break  # the origin returned less than the catalog promised
        if playing:
            run_start = (end - streak) // cs
            if streak - (end - offset) < self.readahead_after and run_start < first:
                # Streaming began past the chunks this run started in, which were read
                # in pieces: complete them, so what was played is stored whole.
                for n in range(run_start, first):
                    key = (track.version_key, n)
                    if key not in self._flights and key not in self._memory and self._nursery:
                        self._nursery.start_soon(self._start_chunk, track, n)
            self.write_behind.note_played(track.version_key, run_start, last)
            if streaming:
                if waited:
                    self.planner.stalled(cursor)
                self._read_ahead(track, cursor, last)
            if self.prefetch is not None and streak >= self.prefetch_after:
                self.prefetch.playing(track, handle, end)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def warm(self, track: Track, n: int) -> None:
        """Make sure chunk ``n`` of ``track`` is fetched whole, verified and queued for the
        store like any read's -- but without counting as a stream, so it starts no
        read-ahead or prefetch (pins pace their own fetching, ``musicfs/pins.py``)."""
        cs = self.store.chunk_size
        if n * cs < track.size:
            await self._range(track, n, 0, min(cs, track.size - n * cs), whole=True)

    async def read_metadata(self, track: Track, offset: int, size: int) -> bytes:
        """A read by MusicFS's own tag reader: always in pieces, never read ahead, and the
        pieces of the first ``METADATA_BUDGET`` bytes and of the tail kept in the
        protected segment, so a scanner after the sync finds the headers cached."""
        head = min(track.size, head_region(track.path))
        first = offset
        if offset < head and track.version_key not in self._heads:
            # The first look at the head fetches the whole head region in one request:
            # what a scanner's probe reads next (``head_region``) is then cached too.
            self._heads[track.version_key] = None
            while len(self._heads) > PLAYED_MEMORY:
                self._heads.popitem(last=False)
            await self.read(track, 0, head, handle=_METADATA)
            first = 0
        data = await self.read(track, offset, size, handle=_METADATA)
        if self._nursery is not None:
            ps = self.planner.piece
            last = max(offset + max(1, len(data)), head if first == 0 else 0) - 1
            keep = [
                (track.version_key, piece_key(p))
                for p in range(first // ps, last // ps + 1)
                if p * ps < METADATA_BUDGET or p * ps >= track.size - METADATA_TAIL
            ]
            self.write_behind.protect(keep, again=True)
        return data

    async def _range(
        self, track: Track, n: int, lo: int, hi: int, *, whole: bool
    ) -> tuple[bytes, bool]:
        """Bytes ``[lo, hi)`` of chunk ``n``, and whether they had to be waited for. A
        ``whole`` read (a streaming cursor) loads the whole chunk; otherwise only the
        pieces the range touches are loaded."""
        version = track.version_key
        key = (version, n)
        chunk = self._memory.get(key)
        if chunk is not None:
            self._memory.move_to_end(key)
            self.counters.memory_hits += 1
            return chunk[lo:hi], False
        cs = self.store.chunk_size
        whole = whole or (lo == 0 and hi >= min(cs, track.size - n * cs))  # all of it asked
        if whole and key not in self._flights:
            started = await self._start_chunk(track, n)
            if started.done.is_set():  # loaded inline (no background nursery)
                return (await _result(started))[lo:hi], True
        ps = self.planner.piece
        base = n * cs
        p_first, p_last = (base + lo) // ps, (base + hi - 1) // ps
        got: list[bytes | _Flight] = []
        missing: dict[int, _Flight] = {}
        for p in range(p_first, p_last + 1):
            pkey = (version, piece_key(p))
            data = self._memory.get(pkey)
            if data is not None:
                self._memory.move_to_end(pkey)
                got.append(data)
                continue
            flight = self._flights.get(pkey)
            if flight is None:
                flight = missing[p] = self._new_flight(pkey)
            else:
                self.counters.shared_fetches += 1
            got.append(flight)
        if missing:
            await self._spawn(self._load_pieces, track, n, missing)
        waited = False
        pieces: list[bytes] = []
        for p, item in zip(range(p_first, p_last + 1), got, strict=True):
            if isinstance(item, _Flight):
                waited = True
                data = await _result(item)
            else:
                self.counters.memory_hits += 1
                data = item
            pieces.append(data)
            if len(data) < self._piece_len(track, p):
                break
        joined = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        start = base + lo - p_first * ps
        return joined[start : start + hi - lo], waited

    def _piece_len(self, track: Track, p: int) -> int:
        ps = self.planner.piece
        return max(0, min(ps, track.size - p * ps))

    def _new_flight(self, key: ChunkKey) -> _Flight:
        flight = self._flights[key] = _Flight()
        return flight

    async def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a load in the background -- it outlives the read that started it: a read
        that hits its deadline does not waste the fetch, and the others waiting for it
        still get it -- or inline when there is no background nursery."""
        if self._nursery is not None:
            self._nursery.start_soon(fn, *args)
        else:
            await fn(*args)

    async def _start_chunk(self, track: Track, n: int, *, remember: bool = True) -> _Flight:
        """Load chunk ``n`` whole: the pieces not in memory or in flight get flights of
        their own, so reads waiting for one of them are answered when it arrives."""
        chunk_flight = self._new_flight((track.version_key, n))
        known, own = self._claim_pieces(track, n, {})
        await self._spawn(self._load_chunk, track, n, chunk_flight, known, own, remember)
        return chunk_flight

    def _claim_pieces(
        self, track: Track, n: int, mine: dict[int, _Flight]
    ) -> tuple[dict[int, bytes | _Flight], dict[int, _Flight]]:
        """The pieces of chunk ``n`` already in memory or in another load's flight, and
        flights for the rest (with ``mine``, flights the caller already owns)."""
        known: dict[int, bytes | _Flight] = {}
        own = dict(mine)
        for p in self._pieces_of(track, n):
            if p in own:
                continue
            pkey = (track.version_key, piece_key(p))
            data = self._memory.get(pkey)
            if data is not None and len(data) == self._piece_len(track, p):
                known[p] = data
            elif pkey in self._flights:
                known[p] = self._flights[pkey]
            else:
                own[p] = self._new_flight(pkey)
        return known, own

    def _pieces_of(self, track: Track, n: int) -> range:
        cs, ps = self.store.chunk_size, self.planner.piece
        end = min(track.size, (n + 1) * cs)
        return range(n * cs // ps, -(-end // ps))

    async def _load_chunk(
        self,
        track: Track,
        n: int,
        flight: _Flight,
        known: dict[int, bytes | _Flight],
        own: dict[int, _Flight],
        remember: bool,
        found: bytes | Rejected | Skipped | None = None,
    ) -> None:
        key = (track.version_key, n)
        try:
            data = await self._assemble(track, n, known, own, remember, found)
            flight.data = data
        except BaseException as exc:
            _fail([flight, *own.values()], exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            flight.done.set()
            self._flights.pop(key, None)
            self._settle(track, own)

    async def _assemble(
        self,
        track: Track,
        n: int,
        known: dict[int, bytes | _Flight],
        own: dict[int, _Flight],
        remember: bool,
        found: bytes | Rejected | Skipped | None,
    ) -> bytes:
        """Chunk ``n`` whole: from the store (unless ``found`` says what it had), else its
        pieces ``own`` from the origin and ``known`` as they are; stored whole."""
        cs = self.store.chunk_size
        key = (track.version_key, n)
        expected = min(cs, track.size - n * cs)
        if found is None:
            found = await self.lookup.get(track, n, expected)
        if isinstance(found, bytes):
            self.counters.store_hits += 1
            self._resolve_from_chunk(track, n, found, own)
            if remember:
                self._remember(key, found)
            return found
        await async_fail_point("reader.fetch")
        try:
            fetched = await self._fetch_pieces(track, own)
        except Exception:
            if found is not SKIPPED:
                raise
            # The origin cannot help either: give the stalled cache disk its full time
            # after all -- a slow disk still beats an EIO.
            again = await self.lookup.get(track, n, expected, patient=True)
            if not isinstance(again, bytes):
                raise
            self.counters.store_hits += 1
            self._resolve_from_chunk(track, n, again, own)
            if remember:
                self._remember(key, again)
            return again
        if isinstance(found, Rejected):
            self._log_repaired(track, n, found)
        return await self._finish_chunk(track, n, known, fetched, remember)

    async def _finish_chunk(
        self,
        track: Track,
        n: int,
        known: dict[int, bytes | _Flight],
        fetched: dict[int, bytes],
        remember: bool,
    ) -> bytes:
        """Chunk ``n`` joined from its pieces just ``fetched`` and the ``known`` ones,
        kept in memory and queued for the store (unless it came out short)."""
        cs = self.store.chunk_size
        key = (track.version_key, n)
        expected = min(cs, track.size - n * cs)
        pieces: list[bytes] = []
        for p in self._pieces_of(track, n):
            item = fetched[p] if p in fetched else known[p]
            data = await _result(item) if isinstance(item, _Flight) else item
            pieces.append(data)
            if len(data) < self._piece_len(track, p):
                break
        data = b"".join(pieces)
        if len(data) != expected:
            # Never cache a chunk of the wrong length: the origin's file is not the
            # version the catalog knows. The short read is passed on as it is.
            self.counters.uncached += 1
            return data
        if remember:
            self._remember(key, data)
        for p in self._pieces_of(track, n):  # the whole chunk serves them from now on
            self._forget_memory((track.version_key, piece_key(p)))
        # Prefetch (``remember`` false) waits for room in the write queue as long as it
        # takes: it is in the background, and a chunk it drops is a hole offline.
        await self.write_behind.put(track.version_key, n, data, patient=not remember)
        return data

    async def _start_span(
        self, track: Track, chunks: list[int], span_bytes: int, remember: bool = True
    ) -> None:
        """Read-ahead of the consecutive chunks ``chunks``, whole: those the store lacks
        are fetched in ranges of up to ``span_bytes`` instead of one or two per chunk -- an
        origin's cost per request (an S3 GET's round trip and headers, an SFTP call across
        threads) is paid once for the span. Each chunk is verified, kept and stored as
        ``_load_chunk`` would; a chunk the store holds, or could not say about in time, or
        that failed verification, takes ``_load_chunk``'s own path. ``remember``: keep
        them in the memory cache too (playback prefetch does not)."""
        version = track.version_key
        loads: _SpanLoads = {}
        for n in chunks:  # flights first, before anything awaits: readers find them
            flight = self._new_flight((version, n))
            known, own = self._claim_pieces(track, n, {})
            loads[n] = (flight, known, own)
        await self._spawn(self._load_span, track, loads, span_bytes, remember)

    async def _load_span(
        self, track: Track, loads: _SpanLoads, span_bytes: int, remember: bool
    ) -> None:
        version = track.version_key
        cs = self.store.chunk_size
        try:
            for n, (flight, known, own) in list(loads.items()):
                found = await self.lookup.get(track, n, min(cs, track.size - n * cs))
                if found is not None:  # stored, or a case of its own: _load_chunk owns it
                    del loads[n]
                    await self._spawn(
                        self._load_chunk, track, n, flight, known, own, remember, found
                    )
            if not loads:
                return
            await async_fail_point("reader.fetch")
            wanted = {p: f for _, _, own in loads.values() for p, f in own.items()}
            fetched = await self._fetch_pieces(track, wanted, span_bytes)
            for n, (flight, known, _) in loads.items():
                flight.data = await self._finish_chunk(track, n, known, fetched, remember)
                flight.done.set()
        except BaseException as exc:
            _fail([f for flight, _, own in loads.values() for f in (flight, *own.values())], exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            for n, (flight, _, own) in loads.items():
                if not flight.done.is_set():
                    flight.error = OSError(errno.EIO, "span load ended without data")
                    flight.done.set()
                if self._flights.get((version, n)) is flight:
                    del self._flights[(version, n)]
                self._settle(track, own)

    async def _load_pieces(self, track: Track, n: int, own: dict[int, _Flight]) -> None:
        """Load the pieces ``own`` of chunk ``n``: from the whole chunk if it is stored,
        else each from the store, else from the origin (stored as pieces)."""
        try:
            cs = self.store.chunk_size
            # A stalled cache disk is given one wait per load, not one more per piece.
            stored: dict[int, bytes | Rejected | None] | None
            stored = None if self.lookup.stalled else dict.fromkeys(own)
            found = await self.lookup.get(track, n, min(cs, track.size - n * cs), pieces=stored)
            if isinstance(found, bytes):
                self.counters.store_hits += 1
                self._remember((track.version_key, n), found)
                self._resolve_from_chunk(track, n, found, own)
                return
            if isinstance(found, Rejected) and (track.version_key, n) not in self._flights:
                # The whole chunk was stored and is bad: fetch it whole again.
                await self._repair_chunk(track, n, own, found)
                return
            rest: dict[int, _Flight] = {}
            for p, flight in own.items():
                piece = None if stored is None or self.lookup.stalled else stored.get(p)
                if isinstance(piece, bytes):
                    self.counters.store_hits += 1
                    self._resolve(flight, (track.version_key, piece_key(p)), piece)
                else:
                    if isinstance(piece, Rejected):
                        self._log_repaired(track, piece_key(p), piece)
                    rest[p] = flight
            if not rest:
                return
            await async_fail_point("reader.fetch")
            try:
                fetched = await self._fetch_pieces(track, rest)
            except Exception:
                if found is not SKIPPED:
                    raise
                # As in ``_assemble``: the origin cannot help, so the disk gets its time.
                again = await self.lookup.get(track, n, min(cs, track.size - n * cs), patient=True)
                if not isinstance(again, bytes):
                    raise
                self.counters.store_hits += 1
                self._remember((track.version_key, n), again)
                self._resolve_from_chunk(track, n, again, own)
                return
            for p, data in fetched.items():
                if len(data) == self._piece_len(track, p):
                    await self.write_behind.put(track.version_key, piece_key(p), data)
                else:
                    self.counters.uncached += 1
        except BaseException as exc:
            _fail(list(own.values()), exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._settle(track, own)

    async def _repair_chunk(
        self, track: Track, n: int, mine: dict[int, _Flight], found: Rejected
    ) -> None:
        chunk_flight = self._new_flight((track.version_key, n))
        known, own = self._claim_pieces(track, n, mine)
        await self._load_chunk(track, n, chunk_flight, known, own, True, found)

    async def _fetch_pieces(
        self, track: Track, flights: dict[int, _Flight], part_bytes: int = 0
    ) -> dict[int, bytes]:
        """Fetch the pieces ``flights`` from the origin: each contiguous run in ranges of at
        most ``part_bytes`` (``self.part_bytes`` unless given), all at once; each piece's
        flight is resolved as soon as its range has arrived. Raises the first failure
        (after failing every flight left)."""
        ps = self.planner.piece
        per_part = max(1, (part_bytes or self.part_bytes) // ps)
        runs: list[list[int]] = []
        for p in sorted(flights):
            if runs and runs[-1][-1] == p - 1 and len(runs[-1]) < per_part:
                runs[-1].append(p)
            else:
                runs.append([p])
        out: dict[int, bytes] = {}

        async def fetch_run(run: list[int]) -> None:
            offset = run[0] * ps
            length = min(track.size, (run[-1] + 1) * ps) - offset
            started = trio.current_time()
            data = await self.fetch(track, offset, length)
            self._note_rate(len(data), trio.current_time() - started)
            self.counters.origin_fetches += 1
            self.counters.origin_bytes += len(data)
            for p in run:
                piece = data[p * ps - offset : (p + 1) * ps - offset]
                out[p] = piece
                remember = len(piece) == self._piece_len(track, p)
                self._resolve(flights[p], (track.version_key, piece_key(p)), piece, remember)

        if len(runs) == 1:
            await fetch_run(runs[0])
        else:
            async with trio.open_nursery() as nursery:
                for run in runs:
                    nursery.start_soon(fetch_run, run)
        return out

    def _note_rate(self, nbytes: int, seconds: float) -> None:
        """What one origin request delivered per second (a moving average): a conservative
        measure of the link while requests overlap."""
        if nbytes >= self.planner.piece and seconds > 0:
            rate = nbytes / seconds
            old = self._origin_rate
            self._origin_rate = rate if old is None else 0.7 * old + 0.3 * rate

    def span_limit(self) -> int:
        """How large a read-ahead range may be now: what the origin delivers in
        ``SPAN_SECONDS`` at the rate seen, between ``part_bytes`` and ``span_bytes`` -- a
        slow link keeps small ranges that finish well within the origin's timeout."""
        rate = self._origin_rate
        if rate is None:
            return self.part_bytes
        return int(max(self.part_bytes, min(self.span_bytes, rate * SPAN_SECONDS)))

    def _resolve(self, flight: _Flight, key: ChunkKey, data: bytes, remember: bool = True) -> None:
        if flight.done.is_set():
            return
        flight.data = data
        if remember:
            self._remember(key, data)
        flight.done.set()

    def _resolve_from_chunk(
        self, track: Track, n: int, chunk: bytes, flights: dict[int, _Flight]
    ) -> None:
        ps = self.planner.piece
        base = n * self.store.chunk_size
        for p, flight in flights.items():
            if not flight.done.is_set():
                flight.data = chunk[p * ps - base : (p + 1) * ps - base]
                flight.done.set()

    def _settle(self, track: Track, flights: dict[int, _Flight]) -> None:
        """A load ended: every flight it owned is done, and leaves the table."""
        for p, flight in flights.items():
            if not flight.done.is_set():
                flight.error = OSError(errno.EIO, "piece load ended without data")
                flight.done.set()
            key = (track.version_key, piece_key(p))
            if self._flights.get(key) is flight:
                del self._flights[key]

    def _log_repaired(self, track: Track, n: int, found: Rejected) -> None:
        self.counters.repaired += 1
        log.warning(
            "cache: %r %s repaired: served %s from the origin (%s)",
            track.path,
            f"piece {n & ~PIECE_BIT}" if is_piece(n) else f"chunk {n}",
            "(not re-stored: read-only cache)" if self.store.serves_cached else "and re-stored",
            found.problem,
        )

    def _forget_memory(self, key: ChunkKey) -> None:
        old = self._memory.pop(key, None)
        if old is not None:
            self._memory_used -= len(old)

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

    # -- read-ahead ------------------------------------------------------------------

    def _read_ahead(self, track: Track, cursor: Cursor, last: int) -> None:
        """Start the chunks of the cursor's window after chunk ``last``, fetched from the
        origin if missing, read and verified from disk if cached (the hashing then
        overlaps with serving the current chunk instead of stalling the next read)."""
        if self._nursery is None:
            return
        if self.planner.window_bytes() > self.memory_bytes // 2:
            self.planner.shrink()  # more read ahead than the memory cache holds
        version = track.version_key
        span_bytes = self.span_limit()
        per_span = max(1, span_bytes // self.store.chunk_size)
        spans: list[list[int]] = []
        for n in self.planner.ahead(cursor, last, track.size):
            if (version, n) in self._memory or (version, n) in self._flights:
                continue
            if spans and n == spans[-1][-1] + 1 and len(spans[-1]) < per_span:
                spans[-1].append(n)
            else:
                spans.append([n])
        for span in spans:
            # The window says how far ahead; this says how many spans are fetched at once
            # for it (all streams together): an origin has few connections, and a player's
            # own read must not queue behind a window's worth of requests when the link
            # stalls and every request holds its connection until it times out.
            if self._pending_readahead >= READAHEAD_IN_FLIGHT:
                cursor.ahead_to = span[0]  # started up to here; the next read continues
                return
            self._pending_readahead += 1
            self.write_behind.note_played(version, span[0], span[-1], ahead=True)
            self._nursery.start_soon(self._read_ahead_span, track, span, span_bytes)

    # -- playback prefetch -------------------------------------------------------------

    def enable_prefetch(self, next_track: NextTrack | None = None, **kw: int) -> Prefetcher:
        """Fetch the rest of a track being played, then the next of its album
        (``prefetch.py``); runs under ``run``."""
        self.prefetch = Prefetcher(self, self.store.chunk_size, next_track, **kw)
        return self.prefetch

    def closed(self, handle: object) -> None:
        """A file handle was released: its cursor and its prefetch go."""
        self.planner.forget(handle)
        if self.prefetch is not None:
            self.prefetch.closed(handle)

    async def prefetch_chunk(self, track: Track, n: int) -> bool:
        key = (track.version_key, n)
        if key in self._memory:
            return True
        flight = self._flights.get(key)
        if flight is None:
            if await self.lookup.has(track.version_key, n):
                await trio.to_thread.run_sync(
                    partial(self.store.promote, [key], ahead=True),
                    limiter=self.write_behind.limiter,
                )
                return True
            flight = self._flights.get(key)
        if flight is None:
            # With the chunks after it that nothing has started yet (and the store
            # certainly lacks), as one span: the prefetcher's next calls find them in
            # flight. Fetched into the store only, not the memory cache. At most half a
            # full read-ahead window at once: what still lands after a seek cancels it.
            version, cs = track.version_key, self.store.chunk_size
            span_bytes = self.span_limit()
            most = max(1, min(span_bytes // cs, self.readahead // 2))
            span = [n]
            while len(span) < most and (span[-1] + 1) * cs < track.size:
                nxt = (version, span[-1] + 1)
                if nxt in self._memory or nxt in self._flights or self.store.may_hold(*nxt):
                    break
                span.append(span[-1] + 1)
            self.write_behind.note_played(version, span[0], span[-1], ahead=True)
            await self._start_span(track, span, span_bytes, False)
            flight = self._flights.get(key)
        if flight is not None:
            await flight.done.wait()
            return flight.error is None
        return True

    async def _read_ahead_span(self, track: Track, span: list[int], span_bytes: int) -> None:
        version = track.version_key
        try:
            if self.memory_bytes <= 0:
                # Nowhere to keep a verified chunk: only fetch what the cache lacks.
                lacking = []
                for n in span:
                    if not await self.lookup.has(version, n):
                        lacking.append(n)
                span = lacking
            # Started meanwhile by a read: the span is what is left after the first such.
            for i, n in enumerate(span):
                if (version, n) in self._flights or (version, n) in self._memory:
                    span = span[:i]
                    break
            if not span:
                return
            self.counters.readahead += len(span)
            await self._start_span(track, span, span_bytes)
            for n in span:
                flight = self._flights.get((version, n))
                if flight is not None:
                    await flight.done.wait()
                if flight is not None and flight.error is not None:
                    log.info(
                        "cache: read-ahead of %r chunk %d failed: %s", track.path, n, flight.error
                    )
                    break
        finally:
            self._pending_readahead -= 1
