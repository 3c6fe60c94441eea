"""The reader's memory cache: recently used verified chunks and pieces, least recently
used dropped first, within ``budget`` bytes (``cache.memory``, default 16 MiB).

FUSE asks in 128 KiB pieces: re-reading and re-hashing a 1 MiB chunk from disk for each of
its eight pieces would cost 8x the disk reads and hashing. Only verified bytes (from the
store, or from the origin) are kept. Touched only from the trio loop: no lock.
"""

from __future__ import annotations

from collections import OrderedDict

from musicfs.cache.flights import ChunkKey


class MemoryCache:
    def __init__(self, budget: int):
        self.budget = budget  # 0: every read goes to the store (the bench compares)
        self.used = 0
        self._chunks: OrderedDict[ChunkKey, bytes] = OrderedDict()

    def __contains__(self, key: ChunkKey) -> bool:
        return key in self._chunks

    def get(self, key: ChunkKey) -> bytes | None:
        """The bytes for ``key``, made the most recently used."""
        data = self._chunks.get(key)
        if data is not None:
            self._chunks.move_to_end(key)
        return data

    def peek(self, key: ChunkKey) -> bytes | None:
        """The bytes for ``key``, leaving the order alone (a load looking what it has)."""
        return self._chunks.get(key)

    def remember(self, key: ChunkKey, data: bytes) -> None:
        if self.budget <= 0:
            return
        self.forget(key)
        self._chunks[key] = data
        self.used += len(data)
        while self.used > self.budget and len(self._chunks) > 1:
            _, dropped = self._chunks.popitem(last=False)
            self.used -= len(dropped)

    def forget(self, key: ChunkKey) -> None:
        old = self._chunks.pop(key, None)
        if old is not None:
            self.used -= len(old)
