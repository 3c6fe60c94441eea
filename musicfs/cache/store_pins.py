"""What the store keeps longer: chunks promoted to the policy's protected segment (played,
or fetched ahead of a player; ``policy.py``) and chunks pinned against eviction (the pins'
truth is the catalog, ``musicfs/pins/selection.py``; the index holds their counts)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import lmdb

from musicfs.cache.store_open import StoreSession
from musicfs.cache.store_parts import StoreParts


class StorePins:
    """Blocking, like the store: call from worker threads."""

    def __init__(self, parts: StoreParts, session: StoreSession):
        self.parts = parts
        self.session = session

    def promote(self, keys: Sequence[tuple[bytes, int]], *, ahead: bool = False) -> int:
        """Move the stored chunks ``(version, chunk_no)`` to the protected segment (the
        reader saw them played, or a pin fetched them; ``ahead``: fetched for a player
        that has not reached them, so they are protected's first to go). Returns how
        many were stored."""
        with self.parts.lock:
            index = self.session.index
            if index is None:
                return 0
            self.parts.ledger.set_protected_cap(self.parts.limits.protected_cap())
            moved = 0
            for version, chunk_no in keys:
                try:
                    digest = index.lookup(version, chunk_no)
                except lmdb.Error:
                    return moved
                if digest is not None and self.parts.ledger.promote(digest, ahead=ahead):
                    moved += 1
            return moved

    def is_protected(self, version: bytes, chunk_no: int) -> bool:
        index = self.session.index
        if index is None:
            return False
        digest = self.session.lookup(index, version, chunk_no)
        return digest is not None and self.parts.ledger.is_protected(digest)

    def pin(self, version: bytes, chunk_no: int, delta: int = 1) -> bool:
        """Keep a chunk from eviction (``delta=-1`` releases). False if it is not stored."""
        with self.parts.lock:
            index = self.session.index
            if index is None or self.session.read_only:
                return False
            digest = index.lookup(version, chunk_no)
            if digest is None or digest not in self.parts.ledger:
                return False
            self.parts.ledger.set_pins(digest, index.set_pins(digest, delta))
            return True

    def set_pinned(self, chunks: Iterable[tuple[bytes, int]]) -> set[tuple[bytes, int]]:
        """Make exactly these ``(version, chunk_no)`` pinned (a stored chunk's pin count is
        how many of them map to it; every other chunk is unpinned), in one index commit.
        Returns those that are stored now. Pins lost with a rebuilt index are restored by
        calling this again."""
        with self.parts.lock:
            index = self.session.index
            if index is None or self.session.read_only:
                return set()
            wanted: dict[bytes, int] = {}
            stored: set[tuple[bytes, int]] = set()
            for version, chunk_no in chunks:
                digest = index.lookup(version, chunk_no)
                if digest is not None and digest in self.parts.ledger:
                    wanted[digest] = wanted.get(digest, 0) + 1
                    stored.add((version, chunk_no))
            changes = {d: n for d, n in wanted.items() if self.parts.ledger.pins.get(d, 0) != n}
            changes.update({d: 0 for d in self.parts.ledger.pins if d not in wanted})
            if changes:
                index.set_pin_counts(changes)
                for digest, pins in changes.items():
                    self.parts.ledger.set_pins(digest, pins)
            return stored

    def pinned_bytes(self) -> int:
        with self.parts.lock:
            sizes = self.parts.ledger.probation | self.parts.ledger.protected
            return sum(sizes.get(d, 0) for d in self.parts.ledger.pins)
