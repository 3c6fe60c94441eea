"""The chunk store's counters and its statistics snapshot (``musicfs status``, metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from musicfs.cache.modes import CacheMode


@dataclass
class StoreCounters:
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    missing_files: int = 0
    stored: int = 0
    stored_bytes: int = 0
    deduplicated: int = 0
    full: int = 0
    evicted: int = 0
    evicted_bytes: int = 0
    write_errors: int = 0
    read_errors: int = 0
    # Where a cache hit's time goes (the bench reports verification's share).
    read_seconds: float = 0.0
    verify_seconds: float = 0.0


@dataclass(frozen=True)
class StoreStatistics:
    mode: CacheMode
    reason: str | None  # why the mode is not normal
    serves_cached: bool  # passthrough that still serves the chunks stored before
    chunks: int
    used_bytes: int
    max_size: int
    min_free: int
    chunk_size: int
    pinned: int  # tracks pinned
    protected_bytes: int  # held by pins and played tracks, evicted last
    counters: StoreCounters
