"""The eviction policy: which stored chunk goes first when the cache needs room.

A segmented LRU (SLRU) with two segments, promoted by *how* a chunk was read rather than
by how often:

* **probation** -- every chunk enters here, and a chunk a tag scanner touched stays here
  however many times it is touched: a scanner reads the head and tail of every track
  every night, so "seen twice" cannot tell it from music;
* **protected** -- chunks read by playback (a sequential run of a track, its read-ahead
  and prefetch; see ``CachingReader``) and chunks a pin fetches. Chunks fetched ahead
  of a player enter at its least recently used end and move to the other when played:
  the next track's prefetch must not push out the album just played. At most
  ``PROTECTED_SHARE`` of the cache: past that its least recently used chunks are
  demoted to probation's most recent end, so a cache full of music still has room for
  the scanner's bytes, and what was played longest ago goes first among the music.

Eviction takes probation's least recently used chunks first, then protected's. Pinned
chunks are never taken from either. A scan of a library ten times the cache therefore
churns probation only: what was played survives while it fits in the protected share.

The segment of each chunk is kept in the index (``ChunkIndex.set_protected``) so the
protection survives a restart; it is advisory (a lost record only makes a chunk
probationary again), never a reason to serve or drop bytes.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from musicfs.cache.index import BlobInfo

# The protected segment's share of the cache (the rest is probation's at least).
PROTECTED_SHARE = 0.8


class ChunkLedger:
    """The in-memory account of the stored chunks (the index is the durable one).

    ``probation`` and ``protected`` map each stored chunk to its payload size, oldest
    access first; ``touched`` holds access times and ``segment_changes`` segment moves not
    yet written to the index (batched: an LMDB commit per read would cost an fsync).
    Callers hold the store lock around changes.
    """

    def __init__(self) -> None:
        self.probation: OrderedDict[bytes, int] = OrderedDict()
        self.protected: OrderedDict[bytes, int] = OrderedDict()
        self.pins: dict[bytes, int] = {}
        self.touched: dict[bytes, int] = {}
        self.segment_changes: dict[bytes, bool] = {}  # digest -> protected
        self.used = 0
        self.protected_used = 0
        self.protected_cap = 0  # bytes; set by the store from its budget

    def __contains__(self, digest: bytes) -> bool:
        return digest in self.probation or digest in self.protected

    def __len__(self) -> int:
        return len(self.probation) + len(self.protected)

    def items(self) -> Iterator[tuple[bytes, int]]:
        """Every stored chunk and its size, probation first, each oldest first."""
        yield from self.probation.items()
        yield from self.protected.items()

    def is_protected(self, digest: bytes) -> bool:
        return digest in self.protected

    def load(
        self, blobs: dict[bytes, BlobInfo], known: Iterable[bytes], protected: Iterable[bytes]
    ) -> None:
        """Start over from the index's blob records, keeping only ``known`` chunks."""
        keep = set(known)
        hot = set(protected)
        self.probation.clear()
        self.protected.clear()
        self.pins.clear()
        self.touched.clear()
        self.segment_changes.clear()
        self.used = self.protected_used = 0
        for digest, info in sorted(blobs.items(), key=lambda kv: kv[1].last_access):
            if digest in keep:
                if digest in hot:
                    self.protected[digest] = info.size
                    self.protected_used += info.size
                else:
                    self.probation[digest] = info.size
                self.used += info.size
                if info.pins:
                    self.pins[digest] = info.pins

    def add(self, digest: bytes, size: int, *, protect: bool = False) -> None:
        self.probation[digest] = size
        self.used += size
        if protect:
            self.promote(digest)

    def touch(self, digest: bytes, *, protect: bool = False) -> None:
        """A read of a stored chunk: most recent in its segment (``protect``: moved to
        protected, the reader saw it played)."""
        if protect and digest in self.probation:
            self.promote(digest)
        for segment in (self.protected, self.probation):
            if digest in segment:
                segment.move_to_end(digest)
                self.touched[digest] = int(time.time())
                return

    def promote(self, digest: bytes, *, ahead: bool = False) -> bool:
        """Move a chunk to protected's most recent end (``ahead``: to its least recent
        end, and one already there stays where it is), demoting protected's oldest past
        the cap. False if it is not stored."""
        size = self.probation.pop(digest, None)
        if size is None:
            if digest in self.protected:
                if not ahead:
                    self.protected.move_to_end(digest)
                return True
            return False
        self.protected[digest] = size
        if ahead:
            self.protected.move_to_end(digest, last=False)
        self.protected_used += size
        self.segment_changes[digest] = True
        self._demote_overflow()
        return True

    def _demote_overflow(self) -> None:
        while self.protected_used > self.protected_cap and len(self.protected) > 1:
            digest, size = self.protected.popitem(last=False)
            self.protected_used -= size
            self.probation[digest] = size
            self.segment_changes[digest] = False

    def set_protected_cap(self, cap: int) -> None:
        self.protected_cap = cap
        self._demote_overflow()

    def forget(self, digest: bytes) -> int | None:
        """Drop a chunk from the account; its size, or ``None`` if it was not there."""
        size = self.probation.pop(digest, None)
        if size is None:
            size = self.protected.pop(digest, None)
            if size is not None:
                self.protected_used -= size
        if size is not None:
            self.used -= size
        self.pins.pop(digest, None)
        self.touched.pop(digest, None)
        self.segment_changes.pop(digest, None)
        return size

    def set_pins(self, digest: bytes, pins: int) -> None:
        if pins:
            self.pins[digest] = pins
        else:
            self.pins.pop(digest, None)

    def victims(self, target: int) -> list[bytes]:
        """Unpinned chunks whose removal brings ``used`` to ``target``: probation's least
        recently used first, then protected's."""
        victims: list[bytes] = []
        freed = 0
        for digest, size in self.items():
            if self.used - freed <= target:
                break
            if self.pins.get(digest):
                continue
            victims.append(digest)
            freed += size
        return victims
