"""The chunk store's open index: opening it with start-up repair, closing it, and what
happens when the cache becomes unusable.

* ``open`` prepares the directory, takes the lock, opens (or rebuilds) the LMDB index,
  sweeps and reconciles the chunk files (``repair.py``) and proves the cache takes writes
  before the store is declared usable;
* on an unusable cache the store goes passthrough: the read-write index is closed -- an
  environment on a failing disk is not touched again -- and, if the cache can still be
  read, re-opened read-only so the chunks already stored keep playing (``readonly.py``);
* lookups run without the store's lock; they register (``lookup``) so that closing waits
  for them: closing an LMDB environment under a running lookup is undefined behaviour;
* a full LMDB map cannot be helped by eviction (not even deletes fit): passthrough, and
  the next open uses a map twice the size.
"""

from __future__ import annotations

import logging
import threading
import time

import lmdb

from musicfs.cache import readonly, repair
from musicfs.cache.index import ChunkIndex, IndexUnusable
from musicfs.cache.modes import CacheMode
from musicfs.cache.planner import piece_size
from musicfs.cache.repair import StartupReport
from musicfs.cache.store_parts import StoreParts
from musicfs.resources import describe

log = logging.getLogger(__name__)


class StoreSession:
    """Blocking, like the store: call from worker threads."""

    def __init__(self, parts: StoreParts):
        self.parts = parts
        self.index: ChunkIndex | None = None
        # Passthrough, but the index is open read-only and stored chunks are served.
        self.read_only = False
        self._users = 0
        self._users_cond = threading.Condition()
        self._map_grow = 1

    def readable(self) -> ChunkIndex | None:
        """The index, if chunks may be looked up in it now (not passthrough, or
        passthrough that still serves the stored chunks)."""
        index = self.index
        if index is None or (
            self.parts.condition.mode is CacheMode.PASSTHROUGH and not self.read_only
        ):
            return None
        return index

    def lookup(self, index: ChunkIndex, version: bytes, chunk_no: int) -> bytes | None:
        """The digest chunk ``chunk_no`` of ``version`` maps to, looked up without the
        lock; registered, so that closing waits for it. Raises ``lmdb.Error``."""
        with self._users_cond:
            self._users += 1
        try:
            return index.lookup(version, chunk_no)
        finally:
            with self._users_cond:
                self._users -= 1
                self._users_cond.notify_all()

    # -- opening and closing -----------------------------------------------------------

    def open(self) -> StartupReport | None:
        """Open (or re-open) the store and repair it. Never raises for a bad cache: on
        failure the store is in passthrough mode and ``None`` is returned."""
        with self.parts.lock:
            self.close()
            try:
                report = self._open_locked()
            except (OSError, IndexUnusable, lmdb.Error) as exc:
                self.close()
                self.unusable(str(self.parts.disk.root), exc)
                return None
            log.info("cache: %s opened: %s", self.parts.disk.root, report.summary())
            self.parts.condition.set(CacheMode.NORMAL, None)
            return report

    def _open_locked(self) -> StartupReport:
        report = StartupReport()
        self.parts.disk.prepare()
        self.parts.disk.take_lock()
        self.index = repair.open_index(
            self.parts.disk,
            map_size=self._index_map_size(),
            chunk_size=self.parts.chunk_size,
            report=report,
        )
        repair.sweep_temp(self.parts.disk, report)
        blobs, known = repair.reconcile(self.parts.disk, self.index, self.parts.chunk_size, report)
        self.parts.ledger.load(blobs, known, self.index.all_protected())
        self.parts.ledger.set_protected_cap(self.parts.limits.protected_cap())
        self.index.load_presence(self.parts.limits.max_size // piece_size(self.parts.chunk_size))
        # Prove the directory and the index take writes before declaring the store usable.
        self.parts.disk.probe_write()
        self.index.set_meta(b"probed", str(int(time.time())).encode())
        report.chunks = len(self.parts.ledger)
        report.bytes = self.parts.ledger.used
        return report

    def close(self) -> None:
        """Close the index and release the directory's lock (the lock held). What the
        ledger has not saved yet is the caller's to flush first."""
        self._close_index()
        self.parts.disk.release_lock()

    def _close_index(self) -> None:
        with self._users_cond:
            self._users_cond.wait_for(lambda: self._users == 0, timeout=5.0)
        if self.index is not None:
            self.index.close()
            self.index = None
        self.read_only = False

    def base_map_size(self) -> int:
        """The LMDB map: address space, not disk -- the file only grows as records are
        written. Three small records per chunk; 1 GiB holds millions of chunks."""
        return max(2**30, (self.parts.limits.max_size // self.parts.chunk_size + 1) * 4096)

    def _index_map_size(self) -> int:
        return self.base_map_size() * self._map_grow

    # -- going passthrough -------------------------------------------------------------

    def unusable(self, what: str, exc: BaseException) -> None:
        """Go passthrough; keep serving the stored chunks read-only if they can be read."""
        self.parts.condition.unusable(what, exc)
        was_read_only = self.read_only
        self._close_index()
        if not was_read_only:
            self._serve_read_only()

    def map_full(self, exc: BaseException) -> None:
        """More index records than the map was sized for: passthrough until the periodic
        re-open, with a map twice the size (growing it needs every reader out)."""
        self._map_grow *= 2
        self.unusable("index map full, re-opening with a larger map", exc)

    def _serve_read_only(self) -> None:
        took_lock = not self.parts.disk.locked
        try:
            if took_lock:
                self.parts.disk.take_lock(writable=False)
            index, blobs = readonly.open_read_only(
                self.parts.disk, map_size=self._index_map_size(), chunk_size=self.parts.chunk_size
            )
        except (OSError, IndexUnusable, lmdb.Error) as exc:
            if took_lock:
                self.parts.disk.release_lock()
            log.warning(
                "cache: %s: stored chunks cannot be served either: %s",
                self.parts.disk.root,
                describe(exc),
            )
            return
        self.parts.ledger.load(blobs, blobs, index.all_protected())
        self.parts.ledger.set_protected_cap(self.parts.limits.protected_cap())
        self.index = index
        self.read_only = True
        log.warning(
            "cache: %s: read-only: still serving the %d stored chunks (%.1f MiB, verified on "
            "every read); nothing is written until the cache is writable again",
            self.parts.disk.root,
            len(self.parts.ledger),
            self.parts.ledger.used / 2**20,
        )
