"""Playback prefetch: while a track is being played, fetch the rest of it into the cache,
then the next track of its album (disc and track order), so a player keeps playing
through a network that drops for longer than the read-ahead window lasts.

* one prefetch per player (file handle): a cursor that seeks or moves to another track
  cancels its prefetch (a new one starts when it streams again);
* at most ``max_streams`` prefetches run at once (the oldest is cancelled for a new
  one), each fetching one chunk at a time, so it takes a share of the link and never
  starves the reads a player is waiting for;
* chunks are fetched into the cache only (not the memory cache) and marked played, so a
  scan does not evict them (``policy.py``);
* the next track is found by ``next_track`` (the daemon asks the catalog); without one,
  only the rest of the current track is fetched.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from musicfs.catalog.model import Track

log = logging.getLogger(__name__)

NextTrack = Callable[[Track], Awaitable[Track | None]]


class ChunkLoader(Protocol):
    async def prefetch_chunk(self, track: Track, n: int) -> bool:
        """Make chunk ``n`` of ``track`` stored; False if it could not be fetched."""
        ...


class Prefetcher:
    def __init__(
        self,
        loader: ChunkLoader,
        chunk_size: int,
        next_track: NextTrack | None = None,
        *,
        max_streams: int = 2,
        next_tracks: int = 1,
    ):
        self.loader = loader
        self.chunk_size = chunk_size
        self.next_track = next_track
        self.max_streams = max_streams
        self.next_tracks = next_tracks
        # handle -> (track being played, its cancel scope)
        self._tasks: OrderedDict[object, tuple[Track, trio.CancelScope]] = OrderedDict()
        self._nursery: trio.Nursery | None = None
        self.started = 0
        self.cancelled = 0
        self.chunks = 0

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()

    def playing(self, track: Track, handle: object, position: int) -> None:
        """A player (``handle``) read ``track`` sequentially up to ``position``."""
        current = self._tasks.get(handle)
        if current is not None and current[0].version_key == track.version_key:
            return
        if current is not None:
            self._cancel(handle)  # the player moved on to another track
        if self._nursery is None:
            return
        while len(self._tasks) >= self.max_streams:
            self._cancel(next(iter(self._tasks)))
        scope = trio.CancelScope()
        self._tasks[handle] = (track, scope)
        self.started += 1
        self._nursery.start_soon(self._prefetch, track, handle, position, scope)

    def moved(self, track: Track, handle: object) -> None:
        """The player seeked (or read elsewhere): stop fetching ahead for it."""
        if handle in self._tasks:
            self._cancel(handle)

    def closed(self, handle: object) -> None:
        if handle in self._tasks:
            self._cancel(handle)

    def _cancel(self, handle: object) -> None:
        _, scope = self._tasks.pop(handle)
        scope.cancel()
        self.cancelled += 1

    def active(self) -> list[str]:
        return [track.path for track, _ in self._tasks.values()]

    async def _prefetch(
        self, track: Track, handle: object, position: int, scope: trio.CancelScope
    ) -> None:
        try:
            with scope:
                await self._fetch_from(track, position // self.chunk_size)
                following = track
                for _ in range(self.next_tracks):
                    if self.next_track is None:
                        break
                    upcoming = await self.next_track(following)
                    if upcoming is None:
                        break
                    await self._fetch_from(upcoming, 0)
                    following = upcoming
        except Exception as exc:  # prefetch is a bonus: the player's own reads still work
            log.info("cache: prefetch after %r stopped: %s", track.path, exc)
        finally:
            entry = self._tasks.get(handle)
            if entry is not None and entry[1] is scope:
                del self._tasks[handle]

    async def _fetch_from(self, track: Track, first: int) -> None:
        chunks = -(-track.size // self.chunk_size)
        for n in range(first, chunks):
            if not await self.loader.prefetch_chunk(track, n):
                return  # the origin failed: the player's own reads will say so
            self.chunks += 1
