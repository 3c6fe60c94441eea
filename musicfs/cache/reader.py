"""The reader seam: FUSE ``read()`` asks a ``Reader`` for bytes of a track, and nothing
else in the FUSE layer knows where the bytes come from."""

from __future__ import annotations

import errno
import logging
from typing import Protocol

from musicfs.catalog.model import Track
from musicfs.origins.base import OriginError
from musicfs.origins.pool import OriginPool

log = logging.getLogger(__name__)


class Reader(Protocol):
    async def read(self, track: Track, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of ``track`` (short only at its end).
        Raises ``OSError`` with the errno the player should see."""
        ...

    async def aclose(self) -> None: ...


class DirectReader:
    """Reads straight from the best origin that holds the track, no caching."""

    def __init__(self, pool: OriginPool):
        self.pool = pool

    async def read(self, track: Track, offset: int, size: int) -> bytes:
        if offset >= track.size:
            return b""
        size = min(size, track.size - offset)
        last: OriginError | None = None
        for origin in self.pool.candidates(track):
            try:
                return await origin.read(track.path, offset, size)
            except OriginError as exc:
                log.warning("read: %s", exc)
                last = exc
        if last is not None:
            raise last
        raise OSError(errno.EIO, f"no origin holds {track.path!r}")

    async def aclose(self) -> None:
        return None
