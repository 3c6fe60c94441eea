"""The store's write path: chunk file (temp -> fsync -> rename -> fsync dir, ``disk.py``),
then the LMDB commit -- the commit is the point of truth, so a crash at any step leaves a
consistent store (start-up repair sweeps or adopts what a crash left).

Bytes are stored once however many versions map to them (dedup by hash). The
write-behind hands over batches (``put_many``): every file step for all the chunks, then
one commit. A write never raises for a disk problem: a full disk evicts and retries once,
then degrades (served uncached until a write succeeds); an unusable one goes passthrough.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from enum import Enum

import lmdb

from musicfs.cache.chunkfile import HEADER_SIZE, chunk_hash, encode_header
from musicfs.cache.index import VERSION_LEN
from musicfs.cache.modes import FULL, UNUSABLE, CacheMode
from musicfs.cache.planner import PIECE_BIT, is_piece, piece_size
from musicfs.cache.store_open import StoreSession
from musicfs.cache.store_parts import StoreParts
from musicfs.cache.store_space import StoreSpace
from musicfs.failpoints import fail_point
from musicfs.resources import describe

log = logging.getLogger(__name__)


class PutResult(Enum):
    STORED = "stored"
    EXISTS = "exists"  # same bytes already stored (dedup): only the mapping was added
    FULL = "full"  # no room even after eviction: served uncached, mode degraded
    SKIPPED = "skipped"  # passthrough: nothing written


class StorePut:
    """Blocking, like the store: call from worker threads."""

    def __init__(self, parts: StoreParts, session: StoreSession, space: StoreSpace):
        self.parts = parts
        self.session = session
        self.space = space  # room for a write

    def _writable(self) -> bool:
        return self.session.index is not None and not self._passthrough()

    def _passthrough(self) -> bool:
        # A method, not an inline test: eviction and commits may switch the mode between
        # two looks at it.
        return self.parts.condition.mode is CacheMode.PASSTHROUGH

    def put(self, version: bytes, chunk_no: int, data: bytes) -> PutResult:
        """Store ``data`` as chunk ``chunk_no`` of ``version``. Never raises for a disk
        problem: the result and the store's mode say what happened."""
        if not self._writable():
            return PutResult.SKIPPED
        assert len(version) == VERSION_LEN
        return self._put_one(version, chunk_no, chunk_hash(data), data)

    def _put_one(self, version: bytes, chunk_no: int, digest: bytes, data: bytes) -> PutResult:
        with self.parts.lock:
            if not self._writable():
                return PutResult.SKIPPED
            index = self.session.index
            assert index is not None
            if digest in self.parts.ledger:
                try:
                    index.add(version, chunk_no, digest, len(data), int(time.time()))
                except (lmdb.Error, OSError) as exc:
                    log.warning("cache: cannot record a deduplicated chunk: %s", describe(exc))
                    return PutResult.FULL
                self.parts.counters.deduplicated += 1
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
        with self.parts.lock:
            index = self.session.index
            if index is None or self._passthrough():
                return [PutResult.SKIPPED] * len(items)
            fresh: dict[bytes, tuple[bytes, int, bytes]] = {}
            for version, n, digest, data in hashed:
                if digest not in self.parts.ledger:
                    fresh.setdefault(digest, (version, n, data))
            try:
                need = sum(HEADER_SIZE + len(d) for _, _, d in fresh.values())
                self.space.make_room_locked(need, hard=False)
                if any(d not in fresh and d not in self.parts.ledger for _, _, d, _ in hashed):
                    # The room made evicted bytes the batch maps again (deduplicated):
                    # mapped now, they would point at a file just deleted. One by one,
                    # each is stored again where it is no longer there.
                    return [self._put_one(*item) for item in hashed]
                self.parts.disk.write_chunks(
                    [
                        (digest, self._header(version, n, len(data)), data)
                        for digest, (version, n, data) in fresh.items()
                    ]
                )
            except OSError:
                return [self._put_one(*item) for item in hashed]
            try:
                fail_point("cas.put.before_commit")
                index.add_many(
                    [(version, n, digest, len(data)) for version, n, digest, data in hashed],
                    int(time.time()),
                )
            except (lmdb.Error, OSError):
                for digest in fresh:
                    self.parts.disk.discard(digest)
                return [self._put_one(*item) for item in hashed]
            fail_point("cas.put.after_commit")
            results = []
            for _, _, digest, data in hashed:
                if fresh.pop(digest, None) is None:
                    self.parts.counters.deduplicated += 1
                    results.append(PutResult.EXISTS)
                    continue
                self._stored(digest, len(data))
                results.append(PutResult.STORED)
            self._writes_succeed()
            return results

    def _put_locked(self, version: bytes, chunk_no: int, digest: bytes, data: bytes) -> PutResult:
        index = self.session.index
        assert index is not None
        need = HEADER_SIZE + len(data)
        for attempt in range(2):
            if self._passthrough():
                return PutResult.SKIPPED  # eviction found the cache unusable
            try:
                self.space.make_room_locked(need, hard=attempt > 0)
                if self._passthrough():  # eviction may have set it
                    return PutResult.SKIPPED
                self.parts.disk.write_chunk(
                    digest, self._header(version, chunk_no, len(data)), data
                )
            except OSError as exc:
                self.parts.counters.write_errors += 1
                if exc.errno in FULL:
                    continue  # evict harder and retry once
                if exc.errno in UNUSABLE:
                    self.session.unusable("writing a chunk", exc)
                    return PutResult.SKIPPED
                self.parts.condition.set(CacheMode.DEGRADED, f"writing a chunk: {describe(exc)}")
                return PutResult.FULL
            try:
                fail_point("cas.put.before_commit")
                index.add(version, chunk_no, digest, len(data), int(time.time()))
            except (lmdb.Error, OSError) as exc:
                self.parts.counters.write_errors += 1
                self.parts.disk.discard(digest)
                if isinstance(exc, lmdb.MapFullError):
                    self.session.map_full(exc)
                    return PutResult.SKIPPED
                # LMDB reports a full disk as EIO: ask the filesystem which it was.
                if self.parts.disk.free_bytes() < 2 * need + self.parts.limits.min_free:
                    continue
                self.session.unusable("committing the index", exc)
                return PutResult.SKIPPED
            fail_point("cas.put.after_commit")
            self._stored(digest, len(data))
            self._writes_succeed()
            return PutResult.STORED
        self.parts.counters.full += 1
        self.parts.condition.set(
            CacheMode.DEGRADED,
            f"no room for a {need}-byte chunk (used {self.parts.ledger.used}, max_size "
            f"{self.parts.limits.max_size}, min_free {self.parts.limits.min_free})",
        )
        return PutResult.FULL

    def _stored(self, digest: bytes, size: int) -> None:
        self.parts.ledger.add(digest, size)
        self.parts.counters.stored += 1
        self.parts.counters.stored_bytes += size

    def _writes_succeed(self) -> None:
        """A write went through: whatever space shortage degraded the store is over."""
        if self.parts.condition.mode is CacheMode.DEGRADED:
            self.parts.condition.set(CacheMode.NORMAL, None)

    def _header(self, version: bytes, chunk_no: int, length: int) -> bytes:
        if is_piece(chunk_no):
            offset = (chunk_no & ~PIECE_BIT) * piece_size(self.parts.chunk_size)
            return encode_header(version, offset, length, piece=True)
        return encode_header(version, chunk_no * self.parts.chunk_size, length)
