"""The parts of the read path that the reader's mechanisms share (``loads.py``,
``readahead.py``): each is its own small object with its own job, built once by
``CachingReader`` and handed over here, so a mechanism's constructor says what it works
with in one word. All of them are touched only from the trio loop: no lock."""

from __future__ import annotations

from dataclasses import dataclass

from musicfs.cache.background import Background
from musicfs.cache.flights import FlightTable
from musicfs.cache.memory import MemoryCache
from musicfs.cache.piece_fetch import PieceFetcher
from musicfs.cache.planner import Planner
from musicfs.cache.reader_statistics import ReaderCounters
from musicfs.cache.store import ChunkStore
from musicfs.cache.store_lookup import StoreLookup
from musicfs.cache.write_behind import WriteBehind


@dataclass(frozen=True, slots=True)
class ReadParts:
    store: ChunkStore  # blocking: only through ``lookup``, ``write_behind`` or a thread
    lookup: StoreLookup  # the store asked within a deadline
    fetcher: PieceFetcher  # the origin
    write_behind: WriteBehind  # the store written in the background
    memory: MemoryCache  # verified chunks and pieces at hand
    flights: FlightTable  # loads in the air
    background: Background  # where loads run
    planner: Planner  # chunk and piece geometry, cursors, windows
    counters: ReaderCounters

    def busy(self, key: tuple[bytes, int]) -> bool:
        """In memory, in flight or on its way to the store already: no load to start."""
        return (
            key in self.memory or key in self.flights or self.write_behind.unstored(key) is not None
        )

    def at_hand(self, key: tuple[bytes, int]) -> bytes | None:
        """Verified bytes for ``key`` without the disk: the memory cache's, or those
        waiting in the write queue (``write_behind.py``)."""
        data = self.memory.get(key)
        return data if data is not None else self.write_behind.unstored(key)
