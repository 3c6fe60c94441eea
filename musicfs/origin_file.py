"""A read-only, seekable file object over ``Origin.read`` for code that wants a file
(mutagen), used from a worker thread while the origin lives on the trio loop.

What it asks the origin for is what a tag reader costs a NAS, so it asks for little and
never twice: every byte fetched is kept for the life of the file object (a parse reads
the header, seeks to the end for an ID3v1 tag, comes back to the header), and a miss
fetches the missing span itself, widened only to a small ``granule`` (tag readers read a
4-byte block header, then the block: the next header is usually in the same granule). A
read of a large block -- an embedded cover, an ID3v2 tag whose size its header gave --
is one request of exactly that size.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable

import trio

ReadRange = Callable[[int, int], Awaitable[bytes]]

# What a miss fetches at least: the first look at a header costs one request, not one per
# 4-byte field. A miss right where the last widened fetch ended (a parser walking Ogg
# pages) doubles it, up to ``MAX_GRANULE``: a 200 KiB comment packet of 4 KiB pages
# is a few requests, and what is fetched past the parser's last read stays under the
# last granule. Aligned down to ``ALIGN`` (never over kept bytes).
GRANULE = 16 * 1024
MAX_GRANULE = 128 * 1024
ALIGN = 4096
# Bytes kept per file object (a tag read touches well under this); past it the oldest
# spans are dropped, so a parser gone astray in a huge file cannot grow memory.
KEEP = 8 * 1024 * 1024


class OriginFile(io.RawIOBase):
    """Pulls only the byte ranges its reader asks for. Must be used from a thread started
    by ``trio.to_thread.run_sync``: each fetch hops back to the loop with ``from_thread``."""

    def __init__(self, read_range: ReadRange, size: int, name: str, granule: int = GRANULE):
        super().__init__()
        self._read_range = read_range
        self._size = size
        self._pos = 0
        self._first_granule = self._granule = granule
        self._fetched_to = -1  # where the last fetch ended, if it was widened to a granule
        # Fetched spans, (start, bytes), in fetch order (the oldest dropped past KEEP).
        self._spans: list[tuple[int, bytes]] = []
        self._kept = 0
        self.name = name
        self.fetches: list[tuple[int, int]] = []  # (offset, length) asked of the origin
        # Parsers such as mutagen swallow some read errors; remember the first so the
        # caller can tell "the origin failed" from "the file is broken".
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise OSError(22, "negative seek position")
        self._pos = pos
        return pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Fills ``buffer`` (a short count only at the end of the file)."""
        end = min(self._pos + len(buffer), self._size)
        filled = 0
        while self._pos + filled < end:
            at = self._pos + filled
            piece = self._kept_at(at, end)
            if piece is None:
                self._fetch(at, end)
                piece = self._kept_at(at, end)
                if piece is None:  # the origin returned less than its listing said
                    break
            buffer[filled : filled + len(piece)] = piece
            filled += len(piece)
        self._pos += filled
        return filled

    def _kept_at(self, at: int, end: int) -> bytes | memoryview | None:
        """The kept bytes from ``at`` on (at most up to ``end``), if any span has ``at``."""
        for start, data in self._spans:
            if start <= at < start + len(data):
                return memoryview(data)[at - start : end - start]
        return None

    def _fetch(self, at: int, end: int) -> None:
        """Fetch the gap at ``at`` (which no kept span has) up to ``end``, widened to the
        granule but never over kept bytes on either side, and keep it."""
        start = at - at % ALIGN
        gap_end = self._size
        for s, data in self._spans:
            if start < s + len(data) <= at:
                start = s + len(data)
            if at < s < gap_end:
                gap_end = s
        if start == self._fetched_to:
            self._granule = min(MAX_GRANULE, self._granule * 2)
        else:
            self._granule = self._first_granule
        stop = min(gap_end, max(end, start + self._granule))
        try:
            data = trio.from_thread.run(self._read_range, start, stop - start)
        except OSError as exc:
            self.error = self.error or exc
            raise
        self.fetches.append((start, stop - start))
        self._fetched_to = start + len(data) if stop > end else -1
        if data:
            self._spans.append((start, data))
            self._kept += len(data)
        while self._kept > KEEP and len(self._spans) > 1:
            self._kept -= len(self._spans.pop(0)[1])


def open_buffered(
    read_range: ReadRange, size: int, name: str, buffer_size: int = 4096
) -> io.BufferedReader:
    """An ``OriginFile`` behind a small buffer: the buffer only saves Python calls for a
    parser's many small reads; what is fetched from the origin is ``OriginFile``'s call."""
    return io.BufferedReader(OriginFile(read_range, size, name), buffer_size)
