"""The configured origins in priority order, and which of them can serve a track."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator, Sequence

from musicfs.catalog.model import Track
from musicfs.origins.base import Origin, OriginError

log = logging.getLogger(__name__)


class OriginPool:
    def __init__(self, origins: Sequence[Origin]):
        # Earlier in the list is preferred.
        self.origins = list(origins)
        self._by_name = {o.name: o for o in self.origins}

    def __iter__(self) -> Iterator[Origin]:
        return iter(self.origins)

    def __len__(self) -> int:
        return len(self.origins)

    def get(self, name: str) -> Origin | None:
        return self._by_name.get(name)

    def candidates(self, track: Track) -> list[Origin]:
        """Origins holding this exact version of ``track``, best first."""
        names = {s.origin for s in track.sources if s.size == track.size}
        return [o for o in self.origins if o.name in names]

    async def read(self, track: Track, offset: int, length: int) -> bytes:
        """Bytes of ``track`` from the best origin that holds it, trying the next on failure.

        This is the one fetch path every reader uses, so failover and health live here.
        """
        last: OriginError | None = None
        for origin in self.candidates(track):
            try:
                return await origin.read(track.path, offset, length)
            except OriginError as exc:
                log.warning("read: %s", exc)
                last = exc
        if last is not None:
            raise last
        raise OSError(errno.EIO, f"no origin holds {track.path!r}")

    async def aclose(self) -> None:
        for origin in self.origins:
            await origin.aclose()
