"""Read-ahead and playback prefetch: chunks fetched before a player asks for them, in
spans of consecutive chunks.

* a streaming cursor's window (``planner.py``) is started after the chunk just read:
  fetched from the origin if missing, read and verified from disk if cached (the hashing
  then overlaps with serving the current chunk instead of stalling the next read);
* consecutive chunks the store lacks are fetched as one origin range of up to
  ``span_limit`` (``piece_fetch.py``) instead of one or two per chunk; each is verified,
  kept and stored as a single chunk's load would (``loads.py``);
* a span's flights exist before its load starts, so concurrent reads find them; at most
  ``READAHEAD_IN_FLIGHT`` spans are fetched at once for all streams, which bounds what
  read-ahead takes from the origins while players wait for their own reads. A span's slot
  is free once its bytes have arrived: a cache disk slower than the link then holds
  chunks waiting for the write queue, not the origin idle -- but no more than the queue's
  worth of them (``max_pending_bytes``), or read-ahead waits for the disk;
* a streaming read whose chunk nothing has started yet (the read that made the cursor
  streaming, or one read-ahead fell behind) starts it and the next chunk as one span: what
  is left of its chunk and the next cost one origin round trip, not two in a row;
* playback prefetch (``prefetch.py``) asks for chunks here too (``prefetch_chunk``), into
  the store only, at most half a full window at once;
* chunks fetched ahead are promoted at the protected segment's cold end
  (``write_behind.py``): a guess about what comes next must not push out what was played.
"""

from __future__ import annotations

import errno
import logging
from functools import partial

import trio

from musicfs.cache.flights import Flight, fail
from musicfs.cache.loads import ChunkLoads, Known
from musicfs.cache.planner import Cursor
from musicfs.cache.read_parts import ReadParts
from musicfs.catalog.model import Track
from musicfs.failpoints import async_fail_point

log = logging.getLogger(__name__)

READAHEAD_IN_FLIGHT = 2  # spans of chunks being read ahead at once, for all streams

# A span's chunks: chunk number -> (its flight, pieces known, pieces it fetches).
SpanLoads = dict[int, tuple[Flight, Known, dict[int, Flight]]]


class ReadAhead:
    def __init__(self, parts: ReadParts, loads: ChunkLoads):
        self.parts = parts
        self.loads = loads  # a single chunk's load, which a span falls back on
        self.pending = 0  # spans being read ahead now

    def start(self, track: Track, cursor: Cursor, last: int, *, with_last: bool = False) -> None:
        """Start the chunks of the cursor's window after chunk ``last``. ``with_last``:
        chunk ``last`` is the one a streaming read is about to load, and nothing has
        started it -- it goes first, in one origin range with the chunk after it (what is
        left of the chunk and the next cost one round trip, not two after one another)."""
        if not self.parts.background.running or (with_last and cursor.window <= 0):
            return  # (no read-ahead window: a read's chunk is fetched in parts, as a load's)
        if self.parts.planner.window_bytes() > self.parts.memory.budget // 2:
            self.parts.planner.shrink()  # more read ahead than the memory cache holds
        version = track.version_key
        span_bytes = self.parts.fetcher.span_limit()
        per_span = max(1, span_bytes // self.parts.store.chunk_size)
        spans: list[list[int]] = [[last]] if with_last else []
        for n in self.parts.planner.ahead(cursor, last, track.size):
            if self.parts.busy((version, n)):
                continue
            # The read waiting for ``last`` waits for its whole range: at most one more.
            most = min(per_span, 2) if with_last and len(spans) == 1 else per_span
            if spans and n == spans[-1][-1] + 1 and len(spans[-1]) < most:
                spans[-1].append(n)
            else:
                spans.append([n])
        for span in spans:
            # The window says how far ahead; this says how many spans are fetched at once
            # for it (all streams together): an origin has few connections, and a player's
            # own read must not queue behind a window's worth of requests when the link
            # stalls and every request holds its connection until it times out. Nor does
            # read-ahead run further ahead of a cache disk that cannot keep up than the
            # write queue's worth of fetched chunks waiting for room in it.
            if (
                self.pending >= READAHEAD_IN_FLIGHT
                or self.parts.write_behind.waiting >= self.parts.write_behind.max_pending_bytes
            ):
                # Started up to here; the next read continues.
                cursor.ahead_to = max(span[0], last + 1)
                return
            self.pending += 1
            if span[0] > last:
                self.parts.write_behind.note_played(version, span[0], span[-1], ahead=True)
                self.parts.background.start_soon(self._read_ahead_span, track, span, span_bytes)
                continue
            # The read's own chunk: its flights exist before the read looks for them.
            self.parts.counters.readahead += len(span) - 1
            fetched = trio.Event()
            loads = self._claim_span(track, span)
            self.parts.background.start_soon(
                self._load_span, track, loads, span_bytes, True, fetched
            )
            self.parts.background.start_soon(self._free_slot, fetched)

    async def _free_slot(self, fetched: trio.Event) -> None:
        try:
            await fetched.wait()
        finally:
            self.pending -= 1

    async def _read_ahead_span(self, track: Track, span: list[int], span_bytes: int) -> None:
        version = track.version_key
        try:
            if self.parts.memory.budget <= 0:
                # Nowhere to keep a verified chunk: only fetch what the cache lacks.
                lacking = []
                for n in span:
                    if not await self.parts.lookup.has(version, n):
                        lacking.append(n)
                span = lacking
            # Started meanwhile by a read: the span is what is left after the first such.
            for i, n in enumerate(span):
                if self.parts.busy((version, n)):
                    span = span[:i]
                    break
            if not span:
                return
            self.parts.counters.readahead += len(span)
            # The slot is the origin's: it is free once the span's bytes have arrived,
            # not only once the cache disk's write queue has taken them (``start``
            # bounds what waits for that).
            fetched = trio.Event()
            await self.start_span(track, span, span_bytes, fetched=fetched)
            await fetched.wait()
            for n in span:
                flight = self.parts.flights.get((version, n))
                if flight is not None and flight.done.is_set() and flight.error is not None:
                    log.info(
                        "cache: read-ahead of %r chunk %d failed: %s", track.path, n, flight.error
                    )
                    break
        finally:
            self.pending -= 1

    async def prefetch_chunk(self, track: Track, n: int) -> bool:
        """Make chunk ``n`` of ``track`` stored (the ``Prefetcher``'s loader); False if it
        could not be fetched."""
        key = (track.version_key, n)
        if key in self.parts.memory or self.parts.write_behind.unstored(key) is not None:
            return True  # stored once the write queue gets to it
        flight = self.parts.flights.get(key)
        if flight is None:
            if await self.parts.lookup.has(track.version_key, n):
                await trio.to_thread.run_sync(
                    partial(self.parts.store.promote, [key], ahead=True),
                    limiter=self.parts.write_behind.limiter,
                )
                return True
            flight = self.parts.flights.get(key)
        if flight is None:
            # With the chunks after it that nothing has started yet (and the store
            # certainly lacks), as one span: the prefetcher's next calls find them in
            # flight. Fetched into the store only, not the memory cache. At most half a
            # full read-ahead window at once: what still lands after a seek cancels it.
            version, cs = track.version_key, self.parts.store.chunk_size
            span_bytes = self.parts.fetcher.span_limit()
            most = max(1, min(span_bytes // cs, self.parts.planner.max_window // 2))
            span = [n]
            while len(span) < most and (span[-1] + 1) * cs < track.size:
                nxt = (version, span[-1] + 1)
                if self.parts.busy(nxt) or self.parts.store.may_hold(*nxt):
                    break
                span.append(span[-1] + 1)
            self.parts.write_behind.note_played(version, span[0], span[-1], ahead=True)
            await self.start_span(track, span, span_bytes, False)
            flight = self.parts.flights.get(key)
        if flight is not None:
            await flight.done.wait()
            return flight.error is None
        return True

    async def start_span(
        self,
        track: Track,
        chunks: list[int],
        span_bytes: int,
        remember: bool = True,
        *,
        fetched: trio.Event | None = None,
    ) -> None:
        """Load the consecutive chunks ``chunks`` whole: those the store lacks are fetched
        in ranges of up to ``span_bytes``; a chunk the store holds, or could not say about
        in time, or that failed verification, takes a single chunk's load
        (``ChunkLoads.load_chunk``). ``remember``: keep them in the memory cache too
        (playback prefetch does not); ``fetched`` is set once the origin has answered."""
        loads = self._claim_span(track, chunks)
        await self.parts.background.spawn(
            self._load_span,
            track,
            loads,
            span_bytes,
            remember,
            fetched if fetched is not None else trio.Event(),
        )

    def _claim_span(self, track: Track, chunks: list[int]) -> SpanLoads:
        """Flights for the chunks and their pieces, made before anything awaits: readers
        find them."""
        loads: SpanLoads = {}
        for n in chunks:
            flight = self.parts.flights.new((track.version_key, n))
            known, own = self.loads.claim_pieces(track, n, {})
            loads[n] = (flight, known, own)
        return loads

    async def _load_span(
        self, track: Track, loads: SpanLoads, span_bytes: int, remember: bool, fetched: trio.Event
    ) -> None:
        version = track.version_key
        try:
            for n, (flight, known, own) in list(loads.items()):
                found = await self.parts.lookup.get(
                    track, n, self.parts.planner.chunk_len(track.size, n)
                )
                if found is not None:  # stored, or a case of its own: load_chunk owns it
                    del loads[n]
                    await self.parts.background.spawn(
                        self.loads.load_chunk, track, n, flight, known, own, remember, found
                    )
            if not loads:
                return
            await async_fail_point("reader.fetch")
            wanted = {p: f for _, _, own in loads.values() for p, f in own.items()}
            pieces = await self.parts.fetcher.pieces(track, wanted, span_bytes)
            fetched.set()
            for n, (flight, known, _) in loads.items():
                flight.data = await self.loads.finish_chunk(track, n, known, pieces, remember)
                flight.done.set()
        except BaseException as exc:
            fail([f for flight, _, own in loads.values() for f in (flight, *own.values())], exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            fetched.set()
            for n, (flight, _, own) in loads.items():
                if not flight.done.is_set():
                    flight.error = OSError(errno.EIO, "span load ended without data")
                    flight.done.set()
                self.parts.flights.end((version, n), flight)
                self.parts.flights.settle(version, own)
