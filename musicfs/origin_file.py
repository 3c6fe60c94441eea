"""A read-only, seekable file object over ``Origin.read`` for code that wants a file
(mutagen), used from a worker thread while the origin lives on the trio loop."""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable

import trio

ReadRange = Callable[[int, int], Awaitable[bytes]]


class OriginFile(io.RawIOBase):
    """Pulls only the byte ranges its reader asks for. Must be used from a thread started
    by ``trio.to_thread.run_sync``: each read hops back to the loop with ``from_thread``."""

    def __init__(self, read_range: ReadRange, size: int, name: str):
        super().__init__()
        self._read_range = read_range
        self._size = size
        self._pos = 0
        self.name = name
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
        want = min(len(buffer), max(0, self._size - self._pos))
        if want == 0:
            return 0
        try:
            data = trio.from_thread.run(self._read_range, self._pos, want)
        except OSError as exc:
            self.error = self.error or exc
            raise
        n = len(data)
        buffer[:n] = data
        self._pos += n
        return n


def open_buffered(
    read_range: ReadRange, size: int, name: str, buffer_size: int = 64 * 1024
) -> io.BufferedReader:
    return io.BufferedReader(OriginFile(read_range, size, name), buffer_size)
