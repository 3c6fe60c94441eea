"""Fetch planning: how much to fetch for a read, from the way the file is being read.

Two access patterns differ and get different fetches:

* a **scanner** (a tag reader, ``ffprobe``, MusicFS's own sync) nibbles at the head and
  the tail of many files. Its reads are served in *pieces* -- 1/16 of a chunk, 64 KiB for
  1 MiB chunks -- fetched and stored on their own, so a 4 KiB header read costs one piece,
  not a whole chunk and two more of read-ahead;
* a **player** reads a track from start to end. Once a cursor has read ``stream_after``
  bytes in a row it is *streaming*: whole chunks are fetched (in ``parts`` concurrent
  ranges, and a read is answered as soon as the pieces it asked for have arrived, not when
  the whole chunk has) and a read-ahead window runs in front of it. The window starts at
  one chunk and doubles every time a read had to wait for the origin (a stall), up to
  ``max_window`` chunks -- the way mountpoint-s3's prefetcher grows -- and is halved for
  every cursor when the bytes read ahead in memory pass the reader's budget. A window is
  refilled once half of it has been read, in one batch the reader fetches as one range
  (``ReadAhead``, ``readahead.py``), not a chunk at a time.

Cursors are kept per file handle (two programs reading the same track do not break each
other's streaks), at most ``MAX_CURSORS`` of them, least recently used dropped first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

# Chunk numbers with this bit set name a piece (``piece_key``) in the index and memory.
PIECE_BIT = 1 << 62
PIECES_PER_CHUNK = 16
MIN_PIECE = 4096
MAX_CURSORS = 512


def piece_size(chunk_size: int) -> int:
    return max(MIN_PIECE, chunk_size // PIECES_PER_CHUNK)


def piece_key(piece_no: int) -> int:
    """The index's chunk number for piece ``piece_no`` (byte offset ``piece_no * size``)."""
    return PIECE_BIT | piece_no


def is_piece(chunk_no: int) -> bool:
    return bool(chunk_no & PIECE_BIT)


@dataclass
class Cursor:
    """Where one reader of one file is: the end of its last read, how many bytes it has
    read in a row up to there, its read-ahead window (chunks) and how far read-ahead has
    been started (the chunk number after the last one)."""

    end: int = -1
    streak: int = 0
    window: int = 0
    ahead_to: int = 0
    seeks: int = 0  # non-sequential reads after the first: a player seeking or a scanner


class Planner:
    def __init__(self, *, chunk_size: int, stream_after: int, max_window: int):
        self.chunk_size = chunk_size
        self.piece = piece_size(chunk_size)
        self.stream_after = stream_after
        self.max_window = max_window
        self._cursors: OrderedDict[tuple[bytes, object], Cursor] = OrderedDict()

    def chunk_len(self, track_size: int, n: int) -> int:
        """How long chunk ``n`` of a file of ``track_size`` bytes is (the last is short)."""
        return min(self.chunk_size, track_size - n * self.chunk_size)

    def piece_len(self, track_size: int, p: int) -> int:
        return max(0, min(self.piece, track_size - p * self.piece))

    def pieces_of(self, track_size: int, n: int) -> range:
        """The piece numbers chunk ``n`` is made of."""
        end = min(track_size, (n + 1) * self.chunk_size)
        return range(n * self.chunk_size // self.piece, -(-end // self.piece))

    def cursor(self, version: bytes, handle: object) -> Cursor:
        key = (version, handle)
        cursor = self._cursors.pop(key, None)
        if cursor is None:
            cursor = Cursor()
        self._cursors[key] = cursor
        while len(self._cursors) > MAX_CURSORS:
            self._cursors.popitem(last=False)
        return cursor

    def forget(self, handle: object) -> None:
        """The file handle was closed."""
        for key in [k for k in self._cursors if k[1] == handle]:
            del self._cursors[key]

    def advance(self, cursor: Cursor, offset: int, end: int) -> bool:
        """Account a read of ``[offset, end)``; True if it continued the cursor's run
        (False: a first read or a seek, which resets the run and the window)."""
        sequential = offset == cursor.end
        if sequential:
            cursor.streak += end - offset
        else:
            if cursor.end >= 0:
                cursor.seeks += 1
            cursor.streak = end - offset
            cursor.window = 0
            cursor.ahead_to = 0
        cursor.end = end
        return sequential

    def streaming(self, cursor: Cursor) -> bool:
        return cursor.streak >= self.stream_after

    def stalled(self, cursor: Cursor) -> None:
        """A streaming read waited for the origin: the window was too small."""
        cursor.window = min(self.max_window, max(1, cursor.window * 2))

    def ensure_window(self, cursor: Cursor) -> None:
        if cursor.window == 0:
            cursor.window = min(1, self.max_window)

    def window_bytes(self) -> int:
        return sum(c.window for c in self._cursors.values()) * self.chunk_size

    def shrink(self) -> None:
        """Memory pressure: halve every window (a streaming cursor keeps one chunk)."""
        for cursor in self._cursors.values():
            if cursor.window > 1:
                cursor.window //= 2

    def ahead(self, cursor: Cursor, last_chunk: int, track_size: int) -> range:
        """Chunk numbers to start reading ahead now, after a read ending in chunk
        ``last_chunk``; marks them started."""
        if cursor.window <= 0:
            return range(0)
        chunks = -(-track_size // self.chunk_size)
        start = max(cursor.ahead_to, last_chunk + 1)
        stop = min(chunks, last_chunk + 1 + cursor.window)
        if start >= stop:
            return range(0)
        if start > last_chunk + 1 and stop - start < cursor.window // 2 and stop < chunks:
            # More than half the window is still ahead: refill it once half is used, in
            # one batch, so the origin is asked for several chunks in one range (``span``)
            # rather than for one chunk after every chunk read.
            return range(0)
        cursor.ahead_to = stop
        return range(start, stop)
