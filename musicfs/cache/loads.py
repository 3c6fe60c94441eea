"""Loads: how one chunk's bytes come to a read -- from memory, from a flight in the air,
from the store, or from the origin -- and how a chunk is assembled from its pieces.

* a read of part of a chunk (a scanner's) loads only the pieces it touches
  (``planner.py``): each from the store if stored, else from the origin, and stored as
  pieces;
* a whole-chunk load (a streaming read, or a read of all of it) first claims every piece
  not in memory or in flight, so reads waiting for one of them are answered when it
  arrives; the chunk is then served from the store if stored, else its pieces are fetched
  and it is joined, kept in memory and queued for the store whole;
* a chunk read from disk is verified every time (``store_get.py``); one that fails is
  fetched again (``repaired``) -- the player never sees the bad bytes;
* a chunk of the wrong length (the origin's file is not the version the catalog knows) is
  served as it is and never cached;
* a stalled cache disk (``store_lookup.py``) gets only a short wait; if the origin then
  fails too, the disk gets its full time after all -- a slow disk still beats an EIO.

Loads run in the background (``background.py``) and outlive the read that started them.
"""

from __future__ import annotations

import logging

from musicfs.cache.flights import Flight, fail
from musicfs.cache.planner import PIECE_BIT, is_piece, piece_key
from musicfs.cache.read_parts import ReadParts
from musicfs.cache.store import Rejected
from musicfs.cache.store_lookup import SKIPPED, Skipped
from musicfs.catalog.model import Track
from musicfs.failpoints import async_fail_point

log = logging.getLogger(__name__)

# A chunk's pieces known to a load: bytes at hand, or another load's flight.
Known = dict[int, "bytes | Flight"]


class ChunkLoads:
    def __init__(self, parts: ReadParts):
        self.parts = parts

    async def range(
        self, track: Track, n: int, lo: int, hi: int, *, whole: bool
    ) -> tuple[bytes, bool]:
        """Bytes ``[lo, hi)`` of chunk ``n``, and whether they had to be waited for. A
        ``whole`` read (a streaming cursor) loads the whole chunk; otherwise only the
        pieces the range touches are loaded."""
        version = track.version_key
        key = (version, n)
        chunk = self.parts.at_hand(key)
        if chunk is not None:
            self.parts.counters.memory_hits += 1
            return chunk[lo:hi], False
        whole = whole or (lo == 0 and hi >= self.parts.planner.chunk_len(track.size, n))
        if whole and key not in self.parts.flights:
            started = await self.start_chunk(track, n)
            if started.done.is_set():  # loaded inline (no background nursery)
                return (await started.result())[lo:hi], True
        ps = self.parts.planner.piece
        base = n * self.parts.store.chunk_size
        p_first, p_last = (base + lo) // ps, (base + hi - 1) // ps
        got: list[bytes | Flight] = []
        missing: dict[int, Flight] = {}
        for p in range(p_first, p_last + 1):
            pkey = (version, piece_key(p))
            data = self.parts.at_hand(pkey)
            if data is not None:
                got.append(data)
                continue
            flight = self.parts.flights.get(pkey)
            if flight is None:
                flight = missing[p] = self.parts.flights.new(pkey)
            else:
                self.parts.counters.shared_fetches += 1
            got.append(flight)
        if missing:
            await self.parts.background.spawn(self._load_pieces, track, n, missing)
        waited = False
        pieces: list[bytes] = []
        for p, item in zip(range(p_first, p_last + 1), got, strict=True):
            if isinstance(item, Flight):
                waited = True
                data = await item.result()
            else:
                self.parts.counters.memory_hits += 1
                data = item
            pieces.append(data)
            if len(data) < self.parts.planner.piece_len(track.size, p):
                break
        joined = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        start = base + lo - p_first * ps
        return joined[start : start + hi - lo], waited

    # -- whole chunks ------------------------------------------------------------------

    async def start_chunk(self, track: Track, n: int) -> Flight:
        """Load chunk ``n`` whole: the pieces not in memory or in flight get flights of
        their own, so reads waiting for one of them are answered when it arrives."""
        chunk_flight = self.parts.flights.new((track.version_key, n))
        known, own = self.claim_pieces(track, n, {})
        await self.parts.background.spawn(self.load_chunk, track, n, chunk_flight, known, own, True)
        return chunk_flight

    def claim_pieces(
        self, track: Track, n: int, mine: dict[int, Flight]
    ) -> tuple[Known, dict[int, Flight]]:
        """The pieces of chunk ``n`` already in memory or in another load's flight, and
        flights for the rest (with ``mine``, flights the caller already owns)."""
        known: Known = {}
        own = dict(mine)
        for p in self.parts.planner.pieces_of(track.size, n):
            if p in own:
                continue
            pkey = (track.version_key, piece_key(p))
            data = self.parts.memory.peek(pkey)
            flight = self.parts.flights.get(pkey)
            if data is not None and len(data) == self.parts.planner.piece_len(track.size, p):
                known[p] = data
            elif flight is not None:
                known[p] = flight
            else:
                own[p] = self.parts.flights.new(pkey)
        return known, own

    async def load_chunk(
        self,
        track: Track,
        n: int,
        flight: Flight,
        known: Known,
        own: dict[int, Flight],
        remember: bool,
        found: bytes | Rejected | Skipped | None = None,
    ) -> None:
        """Answer ``flight`` with chunk ``n`` whole (``found``: what the store already
        said, if it was asked). ``remember``: keep it in the memory cache too."""
        try:
            flight.data = await self._assemble(track, n, known, own, remember, found)
        except BaseException as exc:
            fail([flight, *own.values()], exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            flight.done.set()
            self.parts.flights.pop((track.version_key, n))
            self.parts.flights.settle(track.version_key, own)

    async def _assemble(
        self,
        track: Track,
        n: int,
        known: Known,
        own: dict[int, Flight],
        remember: bool,
        found: bytes | Rejected | Skipped | None,
    ) -> bytes:
        if found is None:
            found = await self.parts.lookup.get(
                track, n, self.parts.planner.chunk_len(track.size, n)
            )
        if isinstance(found, bytes):
            self._serve_stored(track, n, found, own, remember)
            return found
        await async_fail_point("reader.fetch")
        fetched = await self._fetch_or_wait_for_disk(track, n, own, found, own, remember)
        if isinstance(fetched, bytes):
            return fetched
        if isinstance(found, Rejected):
            self.log_repaired(track, n, found)
        return await self.finish_chunk(track, n, known, fetched, remember)

    async def finish_chunk(
        self,
        track: Track,
        n: int,
        known: Known,
        fetched: dict[int, bytes],
        remember: bool,
    ) -> bytes:
        """Chunk ``n`` joined from its pieces just ``fetched`` and the ``known`` ones,
        kept in memory and queued for the store (unless it came out short)."""
        pieces: list[bytes] = []
        for p in self.parts.planner.pieces_of(track.size, n):
            item = fetched[p] if p in fetched else known[p]
            data = await item.result() if isinstance(item, Flight) else item
            pieces.append(data)
            if len(data) < self.parts.planner.piece_len(track.size, p):
                break
        data = b"".join(pieces)
        if len(data) != self.parts.planner.chunk_len(track.size, n):
            # Never cache a chunk of the wrong length: the origin's file is not the
            # version the catalog knows. The short read is passed on as it is.
            self.parts.counters.uncached += 1
            return data
        if remember:
            self.parts.memory.remember((track.version_key, n), data)
        for p in self.parts.planner.pieces_of(track.size, n):  # the whole chunk serves them now
            self.parts.memory.forget((track.version_key, piece_key(p)))
        # Prefetch (``remember`` false) waits for room in the write queue as long as it
        # takes: it is in the background, and a chunk it drops is a hole offline.
        await self.parts.write_behind.put(track.version_key, n, data, patient=not remember)
        return data

    # -- pieces ------------------------------------------------------------------------

    async def _load_pieces(self, track: Track, n: int, own: dict[int, Flight]) -> None:
        """Load the pieces ``own`` of chunk ``n``: from the whole chunk if it is stored,
        else each from the store, else from the origin (stored as pieces)."""
        try:
            # A stalled cache disk is given one wait per load, not one more per piece.
            stored: dict[int, bytes | Rejected | None] | None
            stored = None if self.parts.lookup.stalled else dict.fromkeys(own)
            expected = self.parts.planner.chunk_len(track.size, n)
            found = await self.parts.lookup.get(track, n, expected, pieces=stored)
            if isinstance(found, bytes):
                self._serve_stored(track, n, found, own, True)
                return
            if isinstance(found, Rejected) and (track.version_key, n) not in self.parts.flights:
                # The whole chunk was stored and is bad: fetch it whole again.
                chunk_flight = self.parts.flights.new((track.version_key, n))
                known, claimed = self.claim_pieces(track, n, own)
                await self.load_chunk(track, n, chunk_flight, known, claimed, True, found)
                return
            rest: dict[int, Flight] = {}
            for p, flight in own.items():
                piece = None if stored is None or self.parts.lookup.stalled else stored.get(p)
                if isinstance(piece, bytes):
                    self.parts.counters.store_hits += 1
                    if flight.resolve(piece):
                        self.parts.memory.remember((track.version_key, piece_key(p)), piece)
                else:
                    if isinstance(piece, Rejected):
                        self.log_repaired(track, piece_key(p), piece)
                    rest[p] = flight
            if not rest:
                return
            await async_fail_point("reader.fetch")
            fetched = await self._fetch_or_wait_for_disk(track, n, rest, found, own, True)
            if isinstance(fetched, bytes):
                return
            for p, data in fetched.items():
                if len(data) == self.parts.planner.piece_len(track.size, p):
                    await self.parts.write_behind.put(track.version_key, piece_key(p), data)
                else:
                    self.parts.counters.uncached += 1
        except BaseException as exc:
            fail(own.values(), exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.parts.flights.settle(track.version_key, own)

    # -- shared by both ----------------------------------------------------------------

    async def _fetch_or_wait_for_disk(
        self,
        track: Track,
        n: int,
        wanted: dict[int, Flight],
        found: bytes | Rejected | Skipped | None,
        own: dict[int, Flight],
        remember: bool,
    ) -> dict[int, bytes] | bytes:
        """The pieces ``wanted`` from the origin; if that fails where the store was given
        only a stalled disk's short wait (``found`` is ``SKIPPED``), the disk gets its full
        time after all, and the whole chunk it holds answers ``own``."""
        try:
            return await self.parts.fetcher.pieces(track, wanted)
        except Exception:
            if found is not SKIPPED:
                raise
            expected = self.parts.planner.chunk_len(track.size, n)
            again = await self.parts.lookup.get(track, n, expected, patient=True)
            if not isinstance(again, bytes):
                raise
            self._serve_stored(track, n, again, own, remember)
            return again

    def _serve_stored(
        self, track: Track, n: int, chunk: bytes, flights: dict[int, Flight], remember: bool
    ) -> None:
        """Chunk ``n`` came from the store: it answers the piece ``flights``."""
        self.parts.counters.store_hits += 1
        if remember:
            self.parts.memory.remember((track.version_key, n), chunk)
        ps = self.parts.planner.piece
        base = n * self.parts.store.chunk_size
        for p, flight in flights.items():
            flight.resolve(chunk[p * ps - base : (p + 1) * ps - base])

    def log_repaired(self, track: Track, n: int, found: Rejected) -> None:
        self.parts.counters.repaired += 1
        log.warning(
            "cache: %r %s repaired: served %s from the origin (%s)",
            track.path,
            f"piece {n & ~PIECE_BIT}" if is_piece(n) else f"chunk {n}",
            "(not re-stored: read-only cache)"
            if self.parts.store.serves_cached
            else "and re-stored",
            found.problem,
        )
