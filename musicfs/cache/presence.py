"""Which chunks the index may hold, answered in memory: a Bloom filter of its map keys.

Why: a cold read used to ask the store first, in a worker thread -- a thread hop and an
LMDB lookup, 0.5-1.6 ms on a loaded machine -- before the origin was asked at all, and for
a track never read before the answer is always "not stored". The filter says "certainly
not stored" without leaving the trio loop, so a cold read goes straight to the origin.

Only ever a shortcut, never a source of truth:

* no false negatives: every key the index holds was added (``ChunkIndex`` adds a key when
  it writes its mapping, and fills the filter from all its mappings at open), so "absent"
  is always right; a read that is told "absent" fetches from the origin, which serves the
  right bytes whatever the store holds;
* false positives (and keys the index dropped since: eviction, quarantine) only cost the
  lookup the reader did before; the filter is rebuilt whenever the index is opened.

Two bit positions per key from one 64-bit mix of the version (itself a blake2b digest)
and the chunk number; about eight bits per key the cache can hold.
"""

from __future__ import annotations

from collections.abc import Iterable

MIN_BITS = 1 << 20  # 128 KiB
MAX_BITS = 1 << 27  # 16 MiB
BITS_PER_KEY = 8
_MASK64 = (1 << 64) - 1


def _mix(version: bytes, chunk_no: int) -> int:
    # splitmix64's finaliser over the version's first 8 bytes and the chunk number.
    z = (int.from_bytes(version[:8], "little") ^ (chunk_no * 0x9E3779B97F4A7C15)) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class PresenceFilter:
    def __init__(self, expected_keys: int = 0):
        bits = MIN_BITS
        while bits < expected_keys * BITS_PER_KEY and bits < MAX_BITS:
            bits <<= 1
        self._mask = bits - 1
        self._bits = bytearray(bits // 8)
        self.keys = 0  # keys added (with repeats): what the false-positive rate follows

    @property
    def size_bytes(self) -> int:
        return len(self._bits)

    def add(self, version: bytes, chunk_no: int) -> None:
        h = _mix(version, chunk_no)
        for pos in (h & self._mask, (h >> 32) & self._mask):
            self._bits[pos >> 3] |= 1 << (pos & 7)
        self.keys += 1

    def add_all(self, keys: Iterable[tuple[bytes, int]]) -> None:
        for version, chunk_no in keys:
            self.add(version, chunk_no)

    def may_hold(self, version: bytes, chunk_no: int) -> bool:
        """False: certainly never added. True: perhaps added."""
        h = _mix(version, chunk_no)
        a, b = h & self._mask, (h >> 32) & self._mask
        bits = self._bits
        return bool(bits[a >> 3] & (1 << (a & 7))) and bool(bits[b >> 3] & (1 << (b & 7)))
