"""The content-addressed chunk store: what the reader calls to get, put and pin chunks.

It ties the pieces together, each in its own module:

* ``chunkfile.py`` -- the chunk file format, its hash and verification;
* ``disk.py``      -- the cache directory: layout, atomic writes, quarantine, the lock;
* ``index.py``     -- the LMDB index, the point of truth of what is stored;
* ``repair.py``    -- start-up repair (also ``musicfs fsck --repair``);
* ``policy.py``    -- the account of stored chunks and which goes first (segmented LRU);
* ``space.py``     -- the budget and eviction;
* ``modes.py``     -- normal / degraded / passthrough, and which errors lead where;
* ``readonly.py``  -- passthrough that still serves the stored chunks (unwritable cache).

A write is: chunk file (temp -> fsync -> rename -> fsync dir), then the LMDB commit; the
reader's write-behind hands over batches, written together with one commit. A read
is: index lookup, read the file, verify it against its hash -- every time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import lmdb

from musicfs.cache import readonly, repair
from musicfs.cache.chunkfile import HEADER_SIZE, chunk_hash, encode_header, verify
from musicfs.cache.disk import CacheDisk
from musicfs.cache.index import VERSION_LEN, ChunkIndex, IndexUnusable
from musicfs.cache.modes import FULL, UNUSABLE, CacheCondition, CacheMode
from musicfs.cache.planner import PIECE_BIT, is_piece, piece_size
from musicfs.cache.policy import PROTECTED_SHARE, ChunkLedger
from musicfs.cache.repair import StartupReport
from musicfs.cache.settings import CacheSettings
from musicfs.cache.space import HIGH_WATERMARK, LOW_WATERMARK, budget, evict
from musicfs.failpoints import fail_point
from musicfs.resources import describe
from musicfs.statistics import report, snapshot

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A stored chunk failed verification and was quarantined: fetch it again."""

    problem: str


class PutResult(Enum):
    STORED = "stored"
    EXISTS = "exists"  # same bytes already stored (dedup): only the mapping was added
    FULL = "full"  # no room even after eviction: served uncached, mode degraded
    SKIPPED = "skipped"  # passthrough: nothing written


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
        self.max_size = max_size
        self.min_free = min_free
        self.index: ChunkIndex | None = None
        self.condition = CacheCondition(self.disk.root)
        self.counters = StoreCounters()
        self.ledger = ChunkLedger()
        self._lock = threading.RLock()
        self._users = 0
        self._users_cond = threading.Condition()
        self._map_grow = 1
        # Passthrough, but the index is open read-only and stored chunks are served.
        self._read_only = False

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

    # -- where things are ------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.disk.root

    def chunk_path(self, digest: bytes) -> Path:
        return self.disk.chunk_path(digest)

    # -- mode ------------------------------------------------------------------------

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
        return self._read_only

    def _unusable(self, what: str, exc: BaseException) -> None:
        """Go passthrough. The index is closed -- a read-write environment on a failing
        disk is not touched again -- and, if the cache can still be read, re-opened
        read-only so the chunks already stored keep playing."""
        self.condition.unusable(what, exc)
        was_read_only = self._read_only
        self._close_index(flush=False)
        if not was_read_only:
            self._serve_read_only()

    def _serve_read_only(self) -> None:
        took_lock = not self.disk.locked
        try:
            if took_lock:
                self.disk.take_lock(writable=False)
            index, blobs = readonly.open_read_only(
                self.disk, map_size=self._index_map_size(), chunk_size=self.chunk_size
            )
        except (OSError, IndexUnusable, lmdb.Error) as exc:
            if took_lock:
                self.disk.release_lock()
            log.warning(
                "cache: %s: stored chunks cannot be served either: %s", self.root, describe(exc)
            )
            return
        self.ledger.load(blobs, blobs, index.all_protected())
        self._cap_protected()
        self.index = index
        self._read_only = True
        log.warning(
            "cache: %s: read-only: still serving the %d stored chunks (%.1f MiB, verified on "
            "every read); nothing is written until the cache is writable again",
            self.root,
            len(self.ledger),
            self.used / 2**20,
        )

    # -- opening, start-up repair and closing ---------------------------------------

    def open(self) -> StartupReport | None:
        """Open (or re-open) the store and repair it. Never raises for a bad cache: on
        failure the store is in passthrough mode and ``None`` is returned."""
        with self._lock:
            self._close_locked(flush=False)
            try:
                report = self._open_locked()
            except (OSError, IndexUnusable, lmdb.Error) as exc:
                self._close_locked(flush=False)
                self._unusable(str(self.root), exc)
                return None
            log.info("cache: %s opened: %s", self.root, report.summary())
            self.condition.set(CacheMode.NORMAL, None)
            return report

    def _open_locked(self) -> StartupReport:
        report = StartupReport()
        self.disk.prepare()
        self.disk.take_lock()
        self.index = repair.open_index(
            self.disk, map_size=self._index_map_size(), chunk_size=self.chunk_size, report=report
        )
        repair.sweep_temp(self.disk, report)
        blobs, known = repair.reconcile(self.disk, self.index, self.chunk_size, report)
        self.ledger.load(blobs, known, self.index.all_protected())
        self._cap_protected()
        self.index.load_presence(self.max_size // piece_size(self.chunk_size))
        # Prove the directory and the index take writes before declaring the store usable.
        self.disk.probe_write()
        self.index.set_meta(b"probed", str(int(time.time())).encode())
        report.chunks = len(self.ledger)
        report.bytes = self.ledger.used
        return report

    def _map_size(self) -> int:
        """The LMDB map: address space, not disk -- the file only grows as records are
        written. Three small records per chunk; 1 GiB holds millions of chunks."""
        return max(2**30, (self.max_size // self.chunk_size + 1) * 4096)

    def _index_map_size(self) -> int:
        return self._map_size() * self._map_grow

    def probe(self) -> bool:
        """Retry an unusable cache (passthrough): re-open and repair it. True if usable."""
        if self.mode != CacheMode.PASSTHROUGH:
            return True
        if self._read_only:
            # Still unwritable? Then keep serving read-only rather than re-open for nothing.
            try:
                self.disk.probe_write()
            except OSError:
                return False
        return self.open() is not None

    def close(self, *, flush: bool = True) -> None:
        """``flush=False`` closes like a crash would (tests simulate process death)."""
        with self._lock:
            self._close_locked(flush=flush)
            self.condition.closed()

    @contextlib.contextmanager
    def _index_use(self) -> Iterator[None]:
        """Lock-free index readers register so that closing waits for them: closing an
        LMDB environment under a running lookup is undefined behaviour."""
        with self._users_cond:
            self._users += 1
        try:
            yield
        finally:
            with self._users_cond:
                self._users -= 1
                self._users_cond.notify_all()

    def _close_locked(self, *, flush: bool) -> None:
        self._close_index(flush=flush)
        self.disk.release_lock()

    def _close_index(self, *, flush: bool) -> None:
        with self._users_cond:
            self._users_cond.wait_for(lambda: self._users == 0, timeout=5.0)
        if self.index is not None:
            if flush and not self._read_only:
                self._flush_access_locked()
            self.index.close()
            self.index = None
        self._read_only = False

    # -- reads -----------------------------------------------------------------------

    def may_hold(self, version: bytes, chunk_no: int) -> bool:
        """False if the chunk is certainly not stored -- answered from memory, without the
        index (``presence.py``), so a cold read need not wait for a worker thread."""
        index = self.index
        return index is None or index.may_hold(version, chunk_no)

    def has(self, version: bytes, chunk_no: int) -> bool:
        index = self.index
        if index is None or (self.mode == CacheMode.PASSTHROUGH and not self._read_only):
            return False
        try:
            with self._index_use():
                digest = index.lookup(version, chunk_no)
        except lmdb.Error:
            return False
        return digest is not None and digest in self.ledger

    def get(
        self,
        version: bytes,
        chunk_no: int,
        expected: int,
        *,
        label: str = "",
        protect: bool = False,
    ) -> bytes | Rejected | None:
        """The verified payload of chunk ``chunk_no`` of ``version``; ``None`` on a miss;
        ``Rejected`` if the stored chunk failed verification (it is quarantined, or in
        read-only passthrough left alone and not read again). ``protect``: the reader
        saw it played, so it moves to the policy's protected segment."""
        index = self.index
        if index is None or (self.mode == CacheMode.PASSTHROUGH and not self._read_only):
            return None
        try:
            with self._index_use():
                digest = index.lookup(version, chunk_no)
        except lmdb.Error as exc:
            with self._lock:
                if self.index is index:  # else it was closed under us by a switch: a miss
                    self._unusable("index lookup", exc)
            return None
        if digest is None or (self._read_only and digest not in self.ledger):
            self.counters.misses += 1
            return None
        path = self.chunk_path(digest)
        where = f"{label!r} chunk {chunk_no}" if label else f"chunk {chunk_no}"
        started = time.perf_counter()
        try:
            fail_point("cas.get.before_read")
            raw = self.disk.read_file(path, HEADER_SIZE + expected + 1)
        except FileNotFoundError:
            self.counters.missing_files += 1
            self.counters.misses += 1
            log.warning("cache: %s: chunk file %s is missing; index entry dropped", where, path)
            with self._lock:
                self._forget_locked([digest])
            return None
        except OSError as exc:
            self.counters.read_errors += 1
            why = (
                "not a regular file"
                if exc.errno in (errno.ELOOP, errno.EISDIR)
                else f"unreadable: {describe(exc)}"
            )
            self.reject(digest, why, where)
            return Rejected(why)
        read_done = time.perf_counter()
        problem = verify(raw, digest, expected)
        self.counters.read_seconds += read_done - started
        self.counters.verify_seconds += time.perf_counter() - read_done
        if problem is not None:
            self.reject(digest, problem, where)
            return Rejected(problem)
        with self._lock:
            self.ledger.touch(digest, protect=protect)
        self.counters.hits += 1
        return raw[HEADER_SIZE:]

    def stored_chunks(self) -> list[tuple[bytes, int]]:
        with self._lock:
            return list(self.ledger.items())

    def reject(self, digest: bytes, problem: str, where: str, then: str = "refetching") -> None:
        """Quarantine a chunk that failed verification and forget it."""
        self.counters.corrupt += 1
        with self._lock:
            if self._read_only:
                # Nothing may be written. Forgotten in memory only: the first read after
                # the cache is writable again finds it bad and quarantines it.
                log.warning(
                    "cache: %s: chunk %s is corrupt (%s); left in place (the cache is "
                    "read-only), fetching from the origin",
                    where,
                    digest.hex()[:16],
                    problem,
                )
                self.ledger.forget(digest)
                return
        log.warning(
            "cache: %s: chunk %s is corrupt (%s); quarantined, %s",
            where,
            digest.hex()[:16],
            problem,
            then,
        )
        with self._lock:
            try:
                self.disk.quarantine(self.chunk_path(digest))
            except OSError as exc:
                self._unusable("quarantining a corrupt chunk", exc)
            self._forget_locked([digest])

    def _forget_locked(self, digests: list[bytes]) -> None:
        for digest in digests:
            self.ledger.forget(digest)
        if self.index is None or self._read_only:
            return
        try:
            self.index.drop_blobs(digests)
        except (lmdb.Error, OSError) as exc:
            # The stale records are dropped on the next read or at the next start-up.
            log.warning("cache: cannot drop index records: %s", describe(exc))

    # -- writes ----------------------------------------------------------------------

    def put(self, version: bytes, chunk_no: int, data: bytes) -> PutResult:
        """Store ``data`` as chunk ``chunk_no`` of ``version``. Never raises for a disk
        problem: the result and ``mode`` say what happened."""
        if self.index is None or self.mode == CacheMode.PASSTHROUGH:
            return PutResult.SKIPPED
        assert len(version) == VERSION_LEN
        return self._put_one(version, chunk_no, chunk_hash(data), data)

    def _put_one(self, version: bytes, chunk_no: int, digest: bytes, data: bytes) -> PutResult:
        with self._lock:
            if self.index is None or self.mode == CacheMode.PASSTHROUGH:
                return PutResult.SKIPPED
            if digest in self.ledger:
                try:
                    self.index.add(version, chunk_no, digest, len(data), int(time.time()))
                except (lmdb.Error, OSError) as exc:
                    log.warning("cache: cannot record a deduplicated chunk: %s", describe(exc))
                    return PutResult.FULL
                self.counters.deduplicated += 1
                return PutResult.EXISTS
            return self._put_locked(version, chunk_no, digest, data)

    def put_many(self, items: Sequence[tuple[bytes, int, bytes]]) -> list[PutResult]:
        """``put`` for several ``(version, chunk_no, data)``: the chunk files written
        together (``CacheDisk.write_chunks``) and one index commit for all of them -- a
        handful of synchronous disk flushes per batch instead of four per chunk. If any
        step fails, ``put`` takes over chunk by chunk and sorts the failure out as it
        always has (evicting for room, degrading, passthrough)."""
        if len(items) <= 1:
            return [self.put(*item) for item in items]
        hashed = [(version, n, chunk_hash(data), data) for version, n, data in items]
        assert all(len(version) == VERSION_LEN for version, _, _, _ in hashed)
        with self._lock:
            if self.index is None or self.mode == CacheMode.PASSTHROUGH:
                return [PutResult.SKIPPED] * len(items)
            fresh: dict[bytes, tuple[bytes, int, bytes]] = {}
            for version, n, digest, data in hashed:
                if digest not in self.ledger:
                    fresh.setdefault(digest, (version, n, data))
            try:
                self._make_room(sum(HEADER_SIZE + len(d) for _, _, d in fresh.values()), hard=False)
                self.disk.write_chunks(
                    [
                        (digest, self._header(version, n, len(data)), data)
                        for digest, (version, n, data) in fresh.items()
                    ]
                )
            except OSError:
                return [self._put_one(*item) for item in hashed]
            try:
                fail_point("cas.put.before_commit")
                self.index.add_many(
                    [(version, n, digest, len(data)) for version, n, digest, data in hashed],
                    int(time.time()),
                )
            except (lmdb.Error, OSError):
                for digest in fresh:
                    self.disk.discard(digest)
                return [self._put_one(*item) for item in hashed]
            fail_point("cas.put.after_commit")
            results = []
            for _, _, digest, data in hashed:
                if fresh.pop(digest, None) is None:
                    self.counters.deduplicated += 1
                    results.append(PutResult.EXISTS)
                    continue
                self.ledger.add(digest, len(data))
                self.counters.stored += 1
                self.counters.stored_bytes += len(data)
                results.append(PutResult.STORED)
            if self.mode == CacheMode.DEGRADED:
                self.condition.set(CacheMode.NORMAL, None)
            return results

    def _put_locked(self, version: bytes, chunk_no: int, digest: bytes, data: bytes) -> PutResult:
        assert self.index is not None
        need = HEADER_SIZE + len(data)
        for attempt in range(2):
            if self.mode == CacheMode.PASSTHROUGH:
                return PutResult.SKIPPED  # eviction found the cache unusable
            try:
                self._make_room(need, hard=attempt > 0)
                if self.condition.mode is CacheMode.PASSTHROUGH:  # eviction may have set it
                    return PutResult.SKIPPED
                self.disk.write_chunk(digest, self._header(version, chunk_no, len(data)), data)
            except OSError as exc:
                self.counters.write_errors += 1
                if exc.errno in FULL:
                    continue  # evict harder and retry once
                if exc.errno in UNUSABLE:
                    self._unusable("writing a chunk", exc)
                    return PutResult.SKIPPED
                self.condition.set(CacheMode.DEGRADED, f"writing a chunk: {describe(exc)}")
                return PutResult.FULL
            try:
                fail_point("cas.put.before_commit")
                self.index.add(version, chunk_no, digest, len(data), int(time.time()))
            except (lmdb.Error, OSError) as exc:
                self.counters.write_errors += 1
                self.disk.discard(digest)
                if isinstance(exc, lmdb.MapFullError):
                    self._map_full(exc)
                    return PutResult.SKIPPED
                # LMDB reports a full disk as EIO: ask the filesystem which it was.
                if self.disk.free_bytes() < 2 * need + self.min_free:
                    continue
                self._unusable("committing the index", exc)
                return PutResult.SKIPPED
            fail_point("cas.put.after_commit")
            self.ledger.add(digest, len(data))
            self.counters.stored += 1
            self.counters.stored_bytes += len(data)
            if self.mode == CacheMode.DEGRADED:
                self.condition.set(CacheMode.NORMAL, None)
            return PutResult.STORED
        self.counters.full += 1
        self.condition.set(
            CacheMode.DEGRADED,
            f"no room for a {need}-byte chunk (used {self.used}, max_size {self.max_size}, "
            f"min_free {self.min_free})",
        )
        return PutResult.FULL

    def _header(self, version: bytes, chunk_no: int, length: int) -> bytes:
        if is_piece(chunk_no):
            offset = (chunk_no & ~PIECE_BIT) * piece_size(self.chunk_size)
            return encode_header(version, offset, length, piece=True)
        return encode_header(version, chunk_no * self.chunk_size, length)

    def _map_full(self, exc: BaseException) -> None:
        """More index records than the map was sized for. Not even deletes fit in a full
        map, so eviction cannot help, and growing it needs every reader out of the
        environment: go passthrough; the periodic re-open uses a map twice the size."""
        self._map_grow *= 2
        self._unusable("index map full, re-opening with a larger map", exc)

    # -- space -----------------------------------------------------------------------

    def budget(self) -> int:
        """Bytes the chunks may use now: ``max_size``, less whatever ``min_free`` needs."""
        return budget(self.disk, self.ledger, self.max_size, self.min_free)

    def _make_room(self, need: int, *, hard: bool) -> None:
        room = self.budget()
        if hard:
            # The filesystem said ENOSPC although statvfs promised room: free real space.
            self.disk.clear_quarantine()
            self._evict_locked(min(int(room * LOW_WATERMARK), self.used - 2 * need) - need)
        elif self.used + need > room:
            self.disk.clear_quarantine()
            self._evict_locked(int(room * LOW_WATERMARK) - need)
        if self.used + need > self.budget():
            raise OSError(errno.ENOSPC, "cache budget exhausted")

    def maintain(self) -> int:
        """Background housekeeping: evict between the watermarks, flush access times.
        Returns the number of chunks evicted."""
        with self._lock:
            if self.index is None or self.mode == CacheMode.PASSTHROUGH:
                return 0
            evicted = 0
            self._cap_protected()
            room = self.budget()
            if self.used > room * HIGH_WATERMARK:
                evicted = self._evict_locked(int(room * LOW_WATERMARK))
            self._flush_access_locked()
            return evicted

    def evict(self, target: int) -> int:
        """Evict unpinned chunks in the policy's order until at most ``target`` bytes remain."""
        with self._lock:
            return self._evict_locked(target)

    def _evict_locked(self, target: int) -> int:
        if self.index is None or self._read_only:
            return 0
        result = evict(self.disk, self.index, self.ledger, target)
        self.counters.evicted += result.chunks
        self.counters.evicted_bytes += result.bytes
        if result.error is not None:
            if result.error.errno in UNUSABLE:
                self._unusable("evicting", result.error)
            else:
                log.warning("cache: eviction stopped: %s", describe(result.error))
        return result.chunks

    def _flush_access_locked(self) -> None:
        ledger = self.ledger
        if not (ledger.touched or ledger.segment_changes) or self.index is None:
            return
        if self._read_only:
            return
        touched, ledger.touched = ledger.touched, {}
        segments, ledger.segment_changes = ledger.segment_changes, {}
        try:
            self.index.touch(touched, segments)
        except (lmdb.Error, OSError) as exc:
            log.warning("cache: cannot save access times: %s", describe(exc))

    # -- the policy's segments ---------------------------------------------------------

    def _cap_protected(self) -> None:
        self.ledger.set_protected_cap(int(self.max_size * PROTECTED_SHARE))

    def promote(self, keys: Sequence[tuple[bytes, int]], *, ahead: bool = False) -> int:
        """Move the stored chunks ``(version, chunk_no)`` to the protected segment (the
        reader saw them played, or a pin fetched them; ``ahead``: fetched for a player
        that has not reached them, so they are protected's first to go). Returns how
        many were stored."""
        with self._lock:
            index = self.index
            if index is None:
                return 0
            self._cap_protected()
            moved = 0
            for version, chunk_no in keys:
                try:
                    digest = index.lookup(version, chunk_no)
                except lmdb.Error:
                    return moved
                if digest is not None and self.ledger.promote(digest, ahead=ahead):
                    moved += 1
            return moved

    def is_protected(self, version: bytes, chunk_no: int) -> bool:
        index = self.index
        if index is None:
            return False
        with self._index_use():
            digest = index.lookup(version, chunk_no)
        return digest is not None and self.ledger.is_protected(digest)

    # -- pins ------------------------------------------------------------------------

    def pin(self, version: bytes, chunk_no: int, delta: int = 1) -> bool:
        """Keep a chunk from eviction (``delta=-1`` releases). False if it is not stored."""
        with self._lock:
            if self.index is None or self._read_only:
                return False
            digest = self.index.lookup(version, chunk_no)
            if digest is None or digest not in self.ledger:
                return False
            self.ledger.set_pins(digest, self.index.set_pins(digest, delta))
            return True

    def set_pinned(self, chunks: Iterable[tuple[bytes, int]]) -> set[tuple[bytes, int]]:
        """Make exactly these ``(version, chunk_no)`` pinned (a stored chunk's pin count is
        how many of them map to it; every other chunk is unpinned), in one index commit.
        Returns those that are stored now. Pins lost with a rebuilt index are restored by
        calling this again (the pins' truth is the catalog, see ``musicfs/pins.py``)."""
        with self._lock:
            index = self.index
            if index is None or self._read_only:
                return set()
            wanted: dict[bytes, int] = {}
            stored: set[tuple[bytes, int]] = set()
            for version, chunk_no in chunks:
                digest = index.lookup(version, chunk_no)
                if digest is not None and digest in self.ledger:
                    wanted[digest] = wanted.get(digest, 0) + 1
                    stored.add((version, chunk_no))
            changes = {d: n for d, n in wanted.items() if self.ledger.pins.get(d, 0) != n}
            changes.update({d: 0 for d in self.ledger.pins if d not in wanted})
            if changes:
                index.set_pin_counts(changes)
                for digest, pins in changes.items():
                    self.ledger.set_pins(digest, pins)
            return stored

    @property
    def pinned_bytes(self) -> int:
        with self._lock:
            sizes = self.ledger.probation | self.ledger.protected
            return sum(sizes.get(d, 0) for d in self.ledger.pins)

    # -- status ----------------------------------------------------------------------

    @property
    def used(self) -> int:
        return self.ledger.used

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(
            mode=self.mode,
            reason=self.reason,
            serves_cached=self._read_only,
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
