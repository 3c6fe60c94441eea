"""The parts of the chunk store that its jobs share (``store_open.py``, ``store_get.py``,
``store_put.py``, ``store_space.py``, ``store_pins.py``), built once by ``ChunkStore``."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from musicfs.cache.disk import CacheDisk
from musicfs.cache.modes import CacheCondition
from musicfs.cache.policy import ChunkLedger
from musicfs.cache.space import SpaceLimits
from musicfs.cache.store_statistics import StoreCounters


@dataclass(frozen=True, slots=True)
class StoreParts:
    disk: CacheDisk  # the cache directory
    ledger: ChunkLedger  # the in-memory account of stored chunks (the index: durable)
    condition: CacheCondition  # normal / degraded / passthrough, and why
    limits: SpaceLimits
    counters: StoreCounters
    # Guards writes, eviction, the ledger and opening/closing; lookups run without it.
    lock: threading.RLock
    chunk_size: int
