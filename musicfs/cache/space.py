"""Space: the byte budget and eviction (which chunk goes first: ``policy.py``).

The budget is ``max_size``, less whatever ``min_free`` needs on the cache filesystem.
Background eviction starts above ``HIGH_WATERMARK`` of it and stops at ``LOW_WATERMARK``;
a write that would pass the budget evicts first. Pinned chunks are never evicted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import lmdb

from musicfs.cache.disk import CacheDisk, remove_any
from musicfs.cache.index import ChunkIndex
from musicfs.cache.policy import PROTECTED_SHARE, ChunkLedger
from musicfs.failpoints import fail_point
from musicfs.resources import describe

log = logging.getLogger(__name__)

# Background eviction starts above HIGH and stops at LOW (fractions of the budget).
HIGH_WATERMARK = 0.95
LOW_WATERMARK = 0.85


@dataclass
class SpaceLimits:
    """The store's size limits; a reload changes them in place (``reconfigure``)."""

    max_size: int
    min_free: int

    def protected_cap(self) -> int:
        """How many bytes the policy's protected segment may hold (``policy.py``)."""
        return int(self.max_size * PROTECTED_SHARE)


def budget(disk: CacheDisk, ledger: ChunkLedger, max_size: int, min_free: int) -> int:
    """Bytes the chunks may use now: ``max_size``, less whatever ``min_free`` needs."""
    try:
        free = disk.free_bytes()
    except OSError:
        return max_size
    return max(0, min(max_size, ledger.used + free - min_free))


@dataclass
class Eviction:
    chunks: int = 0
    bytes: int = 0
    error: OSError | None = None  # what stopped it early, if anything


def evict(disk: CacheDisk, index: ChunkIndex | None, ledger: ChunkLedger, target: int) -> Eviction:
    """Unlink unpinned chunks in the policy's order until at most ``target`` bytes
    remain, then drop their index records in one commit."""
    result = Eviction()
    done: list[bytes] = []
    try:
        for digest in ledger.victims(target):
            fail_point("cas.evict.before_unlink")
            try:
                disk.unlink(disk.chunk_path(digest))
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                remove_any(disk.chunk_path(digest))
            fail_point("cas.evict.after_unlink")
            done.append(digest)
            result.chunks += 1
            result.bytes += ledger.forget(digest) or 0
    except OSError as exc:
        result.error = exc
    finally:
        if done and index is not None:
            try:
                # Unlink first, commit after: on a full disk the commit needs the space
                # the unlinks freed; a crash in between leaves records of missing files,
                # which reads and start-up drop.
                index.drop_blobs(done)
            except (lmdb.Error, OSError) as exc:
                log.warning("cache: eviction index commit failed: %s", describe(exc))
    if done:  # one line per round, for the operator watching the cache
        log.info(
            "cache: evicted %d chunks (%.1f MiB); %.1f MiB in %d chunks kept (target %.1f MiB)",
            result.chunks,
            result.bytes / 2**20,
            ledger.used / 2**20,
            len(ledger),
            target / 2**20,
        )
    return result
