"""The store's read path: index lookup, read the chunk file, verify it against its hash --
every time -- and quarantine what fails.

Lookups run without the store's lock (registered by ``StoreSession.lookup`` so closing
waits for them); only what changes the account (a touch, a forgotten chunk, a
quarantine) takes it. In read-only passthrough nothing is written: a corrupt chunk is
forgotten in memory only, and the first read after the cache is writable again finds it
bad and quarantines it.
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass

import lmdb

from musicfs.cache.chunkfile import HEADER_SIZE, verify
from musicfs.cache.store_open import StoreSession
from musicfs.cache.store_parts import StoreParts
from musicfs.failpoints import fail_point
from musicfs.resources import describe

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A stored chunk failed verification and was quarantined: fetch it again."""

    problem: str


class StoreGet:
    """Blocking, like the store: call from worker threads."""

    def __init__(self, parts: StoreParts, session: StoreSession):
        self.parts = parts
        self.session = session

    def may_hold(self, version: bytes, chunk_no: int) -> bool:
        """False if the chunk is certainly not stored -- answered from memory, without the
        index (``presence.py``), so a cold read need not wait for a worker thread."""
        index = self.session.index
        return index is None or index.may_hold(version, chunk_no)

    def has(self, version: bytes, chunk_no: int) -> bool:
        index = self.session.readable()
        try:
            digest = None if index is None else self.session.lookup(index, version, chunk_no)
        except lmdb.Error:
            return False
        return digest is not None and digest in self.parts.ledger

    def get(
        self, version: bytes, chunk_no: int, expected: int, label: str, protect: bool
    ) -> bytes | Rejected | None:
        """The verified payload of chunk ``chunk_no`` of ``version``; ``None`` on a miss;
        ``Rejected`` if the stored chunk failed verification (it is quarantined, or in
        read-only passthrough left alone and not read again). ``protect``: the reader
        saw it played, so it moves to the policy's protected segment."""
        index = self.session.readable()
        if index is None:
            return None
        try:
            digest = self.session.lookup(index, version, chunk_no)
        except lmdb.Error as exc:
            with self.parts.lock:
                if self.session.index is index:  # else closed under us by a switch: a miss
                    self.session.unusable("index lookup", exc)
            return None
        if digest is None or (self.session.read_only and digest not in self.parts.ledger):
            self.parts.counters.misses += 1
            return None
        path = self.parts.disk.chunk_path(digest)
        where = f"{label!r} chunk {chunk_no}" if label else f"chunk {chunk_no}"
        started = time.perf_counter()
        try:
            fail_point("cas.get.before_read")
            raw = self.parts.disk.read_file(path, HEADER_SIZE + expected + 1)
        except FileNotFoundError:
            self.parts.counters.missing_files += 1
            self.parts.counters.misses += 1
            log.warning("cache: %s: chunk file %s is missing; index entry dropped", where, path)
            with self.parts.lock:
                self._forget_locked([digest])
            return None
        except OSError as exc:
            self.parts.counters.read_errors += 1
            why = (
                "not a regular file"
                if exc.errno in (errno.ELOOP, errno.EISDIR)
                else f"unreadable: {describe(exc)}"
            )
            self.reject(digest, why, where)
            return Rejected(why)
        read_done = time.perf_counter()
        problem = verify(raw, digest, expected)
        self.parts.counters.read_seconds += read_done - started
        self.parts.counters.verify_seconds += time.perf_counter() - read_done
        if problem is not None:
            self.reject(digest, problem, where)
            return Rejected(problem)
        with self.parts.lock:
            self.parts.ledger.touch(digest, protect=protect)
        self.parts.counters.hits += 1
        return raw[HEADER_SIZE:]

    def reject(self, digest: bytes, problem: str, where: str, then: str = "refetching") -> None:
        """Quarantine a chunk that failed verification and forget it."""
        self.parts.counters.corrupt += 1
        with self.parts.lock:
            if self.session.read_only:
                log.warning(
                    "cache: %s: chunk %s is corrupt (%s); left in place (the cache is "
                    "read-only), fetching from the origin",
                    where,
                    digest.hex()[:16],
                    problem,
                )
                self.parts.ledger.forget(digest)
                return
        log.warning(
            "cache: %s: chunk %s is corrupt (%s); quarantined, %s",
            where,
            digest.hex()[:16],
            problem,
            then,
        )
        with self.parts.lock:
            try:
                self.parts.disk.quarantine(self.parts.disk.chunk_path(digest))
            except OSError as exc:
                self.session.unusable("quarantining a corrupt chunk", exc)
            self._forget_locked([digest])

    def _forget_locked(self, digests: list[bytes]) -> None:
        for digest in digests:
            self.parts.ledger.forget(digest)
        index = self.session.index
        if index is None or self.session.read_only:
            return
        try:
            index.drop_blobs(digests)
        except (lmdb.Error, OSError) as exc:
            # The stale records are dropped on the next read or at the next start-up.
            log.warning("cache: cannot drop index records: %s", describe(exc))
