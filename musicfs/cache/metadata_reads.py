"""MusicFS's own tag reads (the sync's ``read_track``): always in pieces, never read
ahead, and what they read of a track's head and tail kept in the protected segment, so
a library scanner run after the sync finds the headers cached.

The first look at a track's head fetches its whole head region (``head_region``) in one
request: what a scanner's probe reads next is then cached too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable

from musicfs.cache.background import Background
from musicfs.cache.planner import Planner, piece_key
from musicfs.cache.write_behind import PLAYED_MEMORY, WriteBehind
from musicfs.catalog.model import Track

# The file handle tag reads use: never a stream (``CachingReader.read`` checks it).
METADATA_HANDLE = object()

# How much of a track's head a scanner's probe reads: ffprobe (Jellyfin, Navidrome's
# ffmpeg, Plex) reads an MP3 or MP4 up to its first frames, ~128 KiB with a cover, and a
# FLAC's metadata plus ~260 KiB of frames (measured with strace on tracks with 1200x1200
# covers). The sync's first head read fetches this much, so a scan after it is cached.
_HEAD_REGION = {".flac": 384 * 1024, ".mp3": 192 * 1024}  # MP3: + the kernel's read-ahead
_DEFAULT_HEAD = 128 * 1024

# Pieces of a track's head and tail that tag reads keep protected.
METADATA_BUDGET = 512 * 1024
METADATA_TAIL = 128 * 1024

# Read bytes of a track through the reader, as METADATA_HANDLE.
ReadThrough = Callable[[Track, int, int], Awaitable[bytes]]


def head_region(path: str) -> int:
    dot = path.rfind(".")
    return _HEAD_REGION.get(path[dot:].lower() if dot >= 0 else "", _DEFAULT_HEAD)


class MetadataReads:
    def __init__(
        self,
        read: ReadThrough,
        write_behind: WriteBehind,
        background: Background,
        planner: Planner,
    ):
        self._read = read
        self.write_behind = write_behind
        self.background = background
        self.planner = planner
        self._heads: OrderedDict[bytes, None] = OrderedDict()  # versions whose head was read

    async def read(self, track: Track, offset: int, size: int) -> bytes:
        head = min(track.size, head_region(track.path))
        first = offset
        if offset < head and track.version_key not in self._heads:
            self._heads[track.version_key] = None
            while len(self._heads) > PLAYED_MEMORY:
                self._heads.popitem(last=False)
            await self._read(track, 0, head)
            first = 0
        data = await self._read(track, offset, size)
        if self.background.running:
            ps = self.planner.piece
            last = max(offset + max(1, len(data)), head if first == 0 else 0) - 1
            keep = [
                (track.version_key, piece_key(p))
                for p in range(first // ps, last // ps + 1)
                if p * ps < METADATA_BUDGET or p * ps >= track.size - METADATA_TAIL
            ]
            self.write_behind.protect(keep, again=True)
        return data
