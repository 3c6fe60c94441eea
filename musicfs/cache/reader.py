"""The reader seam: FUSE ``read()`` asks a ``Reader`` for bytes of a track, and nothing
else in the FUSE layer knows where the bytes come from."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from musicfs.catalog.model import Track

# Fetch bytes of a track from wherever it is stored (``OriginPool.read``).
Fetch = Callable[[Track, int, int], Awaitable[bytes]]


class Reader(Protocol):
    async def read(self, track: Track, offset: int, size: int) -> bytes:
        """Bytes ``[offset, offset + size)`` of ``track`` (short only at its end).
        Raises ``OSError`` with the errno the player should see."""
        ...

    async def aclose(self) -> None: ...


class DirectReader:
    """Reads straight from the origins, no caching."""

    def __init__(self, fetch: Fetch):
        self.fetch = fetch

    async def read(self, track: Track, offset: int, size: int) -> bytes:
        if offset >= track.size:
            return b""
        return await self.fetch(track, offset, min(size, track.size - offset))

    async def aclose(self) -> None:
        return None
