"""Space: which chunks the store holds and how big they are, in least-recently-used order
with their pins; the byte budget; and eviction.

The budget is ``max_size``, less whatever ``min_free`` needs on the cache filesystem.
Background eviction starts above ``HIGH_WATERMARK`` of it and stops at ``LOW_WATERMARK``;
a write that would pass the budget evicts first. Pinned chunks are never evicted.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import lmdb

from musicfs.cache.disk import CacheDisk, remove_any
from musicfs.cache.index import BlobInfo, ChunkIndex
from musicfs.cache.modes import describe
from musicfs.failpoints import fail_point

log = logging.getLogger(__name__)

# Background eviction starts above HIGH and stops at LOW (fractions of the budget).
HIGH_WATERMARK = 0.95
LOW_WATERMARK = 0.85


class ChunkLedger:
    """The in-memory account of the stored chunks (the index is the durable one).

    ``lru`` maps every stored chunk to its payload size, oldest access first; ``touched``
    holds access times not yet written to the index (batched: an LMDB commit per read
    would cost an fsync). Callers hold the store lock around changes.
    """

    def __init__(self) -> None:
        self.lru: OrderedDict[bytes, int] = OrderedDict()
        self.pins: dict[bytes, int] = {}
        self.touched: dict[bytes, int] = {}
        self.used = 0

    def __contains__(self, digest: bytes) -> bool:
        return digest in self.lru

    def __len__(self) -> int:
        return len(self.lru)

    def load(self, blobs: dict[bytes, BlobInfo], known: Iterable[bytes]) -> None:
        """Start over from the index's blob records, keeping only ``known`` chunks."""
        keep = set(known)
        self.lru.clear()
        self.pins.clear()
        self.touched.clear()
        self.used = 0
        for digest, info in sorted(blobs.items(), key=lambda kv: kv[1].last_access):
            if digest in keep:
                self.lru[digest] = info.size
                self.used += info.size
                if info.pins:
                    self.pins[digest] = info.pins

    def add(self, digest: bytes, size: int) -> None:
        self.lru[digest] = size
        self.used += size

    def touch(self, digest: bytes) -> None:
        if digest in self.lru:
            self.lru.move_to_end(digest)
            self.touched[digest] = int(time.time())

    def forget(self, digest: bytes) -> int | None:
        """Drop a chunk from the account; its size, or ``None`` if it was not there."""
        size = self.lru.pop(digest, None)
        if size is not None:
            self.used -= size
        self.pins.pop(digest, None)
        self.touched.pop(digest, None)
        return size

    def set_pins(self, digest: bytes, pins: int) -> None:
        if pins:
            self.pins[digest] = pins
        else:
            self.pins.pop(digest, None)

    def victims(self, target: int) -> list[bytes]:
        """Least recently used unpinned chunks whose removal brings ``used`` to ``target``."""
        victims: list[bytes] = []
        freed = 0
        for digest, size in self.lru.items():
            if self.used - freed <= target:
                break
            if self.pins.get(digest):
                continue
            victims.append(digest)
            freed += size
        return victims


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
    """Unlink least-recently-used unpinned chunks until at most ``target`` bytes remain,
    then drop their index records in one commit."""
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
            size = ledger.lru.pop(digest)
            ledger.used -= size
            result.chunks += 1
            result.bytes += size
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
            for digest in done:
                ledger.touched.pop(digest, None)
    if done:
        log.debug("cache: evicted %d chunks (%d bytes)", result.chunks, result.bytes)
    return result
