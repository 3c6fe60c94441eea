"""The caching reader's counters and its statistics snapshot (``musicfs status``,
metrics). One ``ReaderCounters`` is shared by the reader's parts, each counting its own."""

from __future__ import annotations

from dataclasses import dataclass

from musicfs.cache.store_statistics import StoreStatistics


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
