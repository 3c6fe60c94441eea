"""The content-addressed chunk store: what the reader calls to get, put and pin chunks.

``ChunkStore`` is the one object the rest of MusicFS holds; each of its jobs is in its
own module, and it wires them together:

* ``store_open.py``  -- the open index: open with start-up repair, close, passthrough and
  read-only serving when the cache becomes unusable;
* ``store_get.py``   -- the read path: lookup, read, verify every time, quarantine;
* ``store_put.py``   -- the write path: chunk file, then the commit; batches; dedup;
* ``store_space.py`` -- room for a write, background eviction, saving access times;
* ``store_pins.py``  -- promotion to the protected segment, and pins;
* ``store_statistics.py`` -- its counters and statistics snapshot;

and below them ``chunkfile.py`` (format, hash, verification), ``disk.py`` (layout,
atomic writes, quarantine, the lock), ``index.py`` (LMDB, the point of truth of what is
stored), ``repair.py`` (start-up repair, also ``musicfs fsck --repair``), ``policy.py``
(the account of stored chunks and which goes first), ``space.py`` (the budget and
eviction), ``modes.py`` (normal / degraded / passthrough) and ``readonly.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from musicfs.cache.disk import CacheDisk
from musicfs.cache.index import ChunkIndex
from musicfs.cache.modes import CacheCondition, CacheMode
from musicfs.cache.policy import ChunkLedger
from musicfs.cache.repair import StartupReport
from musicfs.cache.settings import CacheSettings
from musicfs.cache.space import SpaceLimits
from musicfs.cache.store_get import Rejected, StoreGet
from musicfs.cache.store_open import StoreSession
from musicfs.cache.store_parts import StoreParts
from musicfs.cache.store_pins import StorePins
from musicfs.cache.store_put import PutResult, StorePut
from musicfs.cache.store_space import StoreSpace
from musicfs.cache.store_statistics import StoreCounters, StoreStatistics
from musicfs.statistics import report, snapshot

# What callers of the store import from here (the results of its methods).
__all__ = ["ChunkStore", "PutResult", "Rejected", "StoreCounters", "StoreStatistics"]


class ChunkStore:
    """All methods block (file I/O, LMDB, hashing): call them from worker threads.

    Thread-safe: one lock guards writes, eviction and the in-memory accounting; reads of
    chunk files and index lookups run without it.
    """

    def __init__(
        self,
        root: Path,
        *,
        chunk_size: int = 1024 * 1024,
        max_size: int = 10 * 1024**3,
        min_free: int = 1024**3,
        quarantine_keep: int = 2,
    ):
        self.disk = self._make_disk(Path(root), quarantine_keep)
        self.chunk_size = chunk_size
        self.limits = SpaceLimits(max_size=max_size, min_free=min_free)  # a reload sets them
        self.condition = CacheCondition(self.disk.root)
        self.counters = StoreCounters()
        self.ledger = ChunkLedger()
        self._lock = threading.RLock()
        parts = StoreParts(
            disk=self.disk,
            ledger=self.ledger,
            condition=self.condition,
            limits=self.limits,
            counters=self.counters,
            lock=self._lock,
            chunk_size=chunk_size,
        )
        self.session = StoreSession(parts)
        self.space = StoreSpace(parts, self.session)
        self.getter = StoreGet(parts, self.session)
        self.putter = StorePut(parts, self.session, self.space)
        self.pins = StorePins(parts, self.session)

    @classmethod
    def from_settings(cls, cache_dir: Path, settings: CacheSettings) -> ChunkStore:
        return cls(
            cache_dir,
            chunk_size=settings.chunk_size,
            max_size=settings.max_size,
            min_free=settings.min_free,
        )

    def _make_disk(self, root: Path, quarantine_keep: int) -> CacheDisk:
        """The filesystem layer (``FaultyStore`` puts one that can fail here)."""
        return CacheDisk(root, quarantine_keep=quarantine_keep)

    # -- where things are, and the mode ------------------------------------------------

    @property
    def root(self) -> Path:
        return self.disk.root

    def chunk_path(self, digest: bytes) -> Path:
        return self.disk.chunk_path(digest)

    @property
    def index(self) -> ChunkIndex | None:
        return self.session.index

    @property
    def mode(self) -> CacheMode:
        return self.condition.mode

    @property
    def reason(self) -> str | None:
        return self.condition.reason

    @property
    def serves_cached(self) -> bool:
        """Passthrough that still serves (verified) chunks stored before the cache became
        unwritable; nothing is written."""
        return self.session.read_only

    @property
    def max_size(self) -> int:
        return self.limits.max_size

    @property
    def min_free(self) -> int:
        return self.limits.min_free

    # -- opening and closing (store_open.py) ------------------------------------------

    def open(self) -> StartupReport | None:
        """Open (or re-open) the store and repair it. Never raises for a bad cache: on
        failure the store is in passthrough mode and ``None`` is returned."""
        return self.session.open()

    def probe(self) -> bool:
        """Retry an unusable cache (passthrough): re-open and repair it. True if usable."""
        if self.mode != CacheMode.PASSTHROUGH:
            return True
        if self.session.read_only:
            # Still unwritable? Then keep serving read-only rather than re-open for nothing.
            try:
                self.disk.probe_write()
            except OSError:
                return False
        return self.open() is not None

    def close(self, *, flush: bool = True) -> None:
        """``flush=False`` closes like a crash would (tests simulate process death)."""
        with self._lock:
            if flush:
                self.space.flush_access_locked()
            self.session.close()
            self.condition.closed()

    # -- reads (store_get.py) ----------------------------------------------------------

    def may_hold(self, version: bytes, chunk_no: int) -> bool:
        return self.getter.may_hold(version, chunk_no)

    def has(self, version: bytes, chunk_no: int) -> bool:
        return self.getter.has(version, chunk_no)

    def get(
        self,
        version: bytes,
        chunk_no: int,
        expected: int,
        *,
        label: str = "",
        protect: bool = False,
    ) -> bytes | Rejected | None:
        """The verified payload of a stored chunk, ``None`` or ``Rejected`` (``store_get.py``)."""
        return self.getter.get(version, chunk_no, expected, label, protect)

    def reject(self, digest: bytes, problem: str, where: str, then: str = "refetching") -> None:
        self.getter.reject(digest, problem, where, then)

    def stored_chunks(self) -> list[tuple[bytes, int]]:
        with self._lock:
            return list(self.ledger.items())

    # -- writes (store_put.py) ---------------------------------------------------------

    def put(self, version: bytes, chunk_no: int, data: bytes) -> PutResult:
        return self.putter.put(version, chunk_no, data)

    def put_many(self, items: Sequence[tuple[bytes, int, bytes]]) -> list[PutResult]:
        return self.putter.put_many(items)

    # -- space (store_space.py) --------------------------------------------------------

    def budget(self) -> int:
        return self.space.budget()

    def maintain(self) -> int:
        return self.space.maintain()

    def evict(self, target: int) -> int:
        return self.space.evict(target)

    # -- protection and pins (store_pins.py) -------------------------------------------

    def promote(self, keys: Sequence[tuple[bytes, int]], *, ahead: bool = False) -> int:
        return self.pins.promote(keys, ahead=ahead)

    def is_protected(self, version: bytes, chunk_no: int) -> bool:
        return self.pins.is_protected(version, chunk_no)

    def pin(self, version: bytes, chunk_no: int, delta: int = 1) -> bool:
        return self.pins.pin(version, chunk_no, delta)

    def set_pinned(self, chunks: Iterable[tuple[bytes, int]]) -> set[tuple[bytes, int]]:
        return self.pins.set_pinned(chunks)

    @property
    def pinned_bytes(self) -> int:
        return self.pins.pinned_bytes()

    # -- status ------------------------------------------------------------------------

    @property
    def used(self) -> int:
        return self.ledger.used

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            mode=self.mode,
            reason=self.reason,
            serves_cached=self.session.read_only,
            chunks=len(self.ledger),
            used_bytes=self.used,
            max_size=self.max_size,
            min_free=self.min_free,
            chunk_size=self.chunk_size,
            pinned=len(self.ledger.pins),
            protected_bytes=self.ledger.protected_used,
            counters=snapshot(self.counters),
        )

    def status(self) -> dict[str, Any]:
        return {"dir": str(self.root), **report(self.statistics())}
