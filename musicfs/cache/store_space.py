"""The store's space keeping: room for a write, background eviction between the
watermarks, and saving the policy's access times (the budget and the eviction itself:
``space.py``; which chunk goes first: ``policy.py``)."""

from __future__ import annotations

import errno
import logging

import lmdb

from musicfs.cache.modes import UNUSABLE, CacheMode
from musicfs.cache.space import HIGH_WATERMARK, LOW_WATERMARK, budget, evict
from musicfs.cache.store_open import StoreSession
from musicfs.cache.store_parts import StoreParts
from musicfs.resources import describe

log = logging.getLogger(__name__)


class StoreSpace:
    """Blocking, like the store. Methods ending in ``_locked`` expect the store's lock."""

    def __init__(self, parts: StoreParts, session: StoreSession):
        self.parts = parts
        self.session = session

    def budget(self) -> int:
        """Bytes the chunks may use now: ``max_size``, less whatever ``min_free`` needs."""
        return budget(
            self.parts.disk,
            self.parts.ledger,
            self.parts.limits.max_size,
            self.parts.limits.min_free,
        )

    def make_room_locked(self, need: int, *, hard: bool) -> None:
        """Evict until ``need`` more bytes fit in the budget; ``hard``: the filesystem said
        ENOSPC although statvfs promised room, so free real space. Raises ENOSPC if even
        that is not enough."""
        room = self.budget()
        used = self.parts.ledger.used
        if hard:
            self.parts.disk.clear_quarantine()
            self.evict_locked(min(int(room * LOW_WATERMARK), used - 2 * need) - need)
        elif used + need > room:
            self.parts.disk.clear_quarantine()
            self.evict_locked(int(room * LOW_WATERMARK) - need)
        if self.parts.ledger.used + need > self.budget():
            raise OSError(errno.ENOSPC, "cache budget exhausted")

    def maintain(self) -> int:
        """Background housekeeping: evict between the watermarks, flush access times.
        Returns the number of chunks evicted."""
        with self.parts.lock:
            if self.session.index is None or self.parts.condition.mode is CacheMode.PASSTHROUGH:
                return 0
            evicted = 0
            self.parts.ledger.set_protected_cap(self.parts.limits.protected_cap())
            room = self.budget()
            if self.parts.ledger.used > room * HIGH_WATERMARK:
                evicted = self.evict_locked(int(room * LOW_WATERMARK))
            self.flush_access_locked()
            return evicted

    def evict(self, target: int) -> int:
        """Evict unpinned chunks in the policy's order until at most ``target`` bytes remain."""
        with self.parts.lock:
            return self.evict_locked(target)

    def evict_locked(self, target: int) -> int:
        index = self.session.index
        if index is None or self.session.read_only:
            return 0
        result = evict(self.parts.disk, index, self.parts.ledger, target)
        self.parts.counters.evicted += result.chunks
        self.parts.counters.evicted_bytes += result.bytes
        if result.error is not None:
            if result.error.errno in UNUSABLE:
                self.session.unusable("evicting", result.error)
            else:
                log.warning("cache: eviction stopped: %s", describe(result.error))
        return result.chunks

    def flush_access_locked(self) -> None:
        """Save the access times and segment changes the ledger collected (advisory: a
        lost save only makes chunks look older or probationary after a restart)."""
        ledger, index = self.parts.ledger, self.session.index
        if not (ledger.touched or ledger.segment_changes) or index is None:
            return
        if self.session.read_only:
            return
        touched, ledger.touched = ledger.touched, {}
        segments, ledger.segment_changes = ledger.segment_changes, {}
        try:
            index.touch(touched, segments)
        except (lmdb.Error, OSError) as exc:
            log.warning("cache: cannot save access times: %s", describe(exc))
