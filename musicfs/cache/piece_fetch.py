"""Fetching from the origin: pieces in ranges, each answered as soon as its range has
arrived, and a measure of the link that bounds how large a read-ahead range may be.

A chunk is fetched in ranges of ``part_bytes`` at once, so a read is answered when the
pieces it asked for have arrived, not when the whole chunk has. Read-ahead asks for
larger ranges (``span_limit``): an origin's cost per request -- an S3 GET's round trip
and headers, an SFTP call across threads -- is then paid once for several chunks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from musicfs.cache.flights import Flight
from musicfs.cache.memory import MemoryCache
from musicfs.cache.planner import Planner, piece_key
from musicfs.cache.reader_statistics import ReaderCounters
from musicfs.catalog.model import Track

# Fetch bytes of a track from wherever it is stored (``OriginPool.read``).
Fetch = Callable[[Track, int, int], Awaitable[bytes]]

SPAN_SECONDS = 0.5  # a read-ahead range is what the origin delivers in about this long


class PieceFetcher:
    def __init__(
        self,
        fetch: Fetch,
        planner: Planner,
        memory: MemoryCache,
        counters: ReaderCounters,
        *,
        part_bytes: int,
        span_bytes: int,
    ):
        self.fetch = fetch
        self.planner = planner
        self.memory = memory
        self.counters = counters
        self.part_bytes = part_bytes  # a chunk is fetched in ranges of this size at once
        self.span_bytes = span_bytes  # the largest read-ahead range
        self._origin_rate: float | None = None  # bytes/s of one origin request

    async def pieces(
        self, track: Track, flights: dict[int, Flight], part_bytes: int = 0
    ) -> dict[int, bytes]:
        """Fetch the pieces ``flights`` from the origin: each contiguous run in ranges of at
        most ``part_bytes`` (``self.part_bytes`` unless given), all at once; each piece's
        flight is answered (and a whole piece kept in memory) as soon as its range has
        arrived. Raises the first failure; the caller fails the flights left."""
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
            self.note_rate(len(data), trio.current_time() - started)
            self.counters.origin_fetches += 1
            self.counters.origin_bytes += len(data)
            for p in run:
                piece = data[p * ps - offset : (p + 1) * ps - offset]
                out[p] = piece
                whole = len(piece) == self.planner.piece_len(track.size, p)
                if flights[p].resolve(piece) and whole:
                    self.memory.remember((track.version_key, piece_key(p)), piece)

        if len(runs) == 1:
            await fetch_run(runs[0])
        else:
            async with trio.open_nursery() as nursery:
                for run in runs:
                    nursery.start_soon(fetch_run, run)
        return out

    def note_rate(self, nbytes: int, seconds: float) -> None:
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
