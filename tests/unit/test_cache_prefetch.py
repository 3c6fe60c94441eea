"""Layer 1: playback prefetch -- a track being played is fetched to its end in the
background, then the next track of the album; a seek cancels it; a scanner's nibbles
start none; the prefetched chunks are protected from a scan."""

from __future__ import annotations

from pathlib import Path

import trio

from musicfs.cache.reader import CachingReader
from musicfs.catalog.model import Track
from tests.support.faulty_store import FaultyStore, TrackOrigin

CS = 64 * 1024
READ = 16 * 1024


def new_store(tmp_path: Path) -> FaultyStore:
    return FaultyStore(tmp_path / "cache", chunk_size=CS, max_size=256 * CS, min_free=0)


def album(tmp_path: Path) -> tuple[TrackOrigin, list[Track]]:
    origin = TrackOrigin(tmp_path / "origin")
    return origin, [origin.add(f"{i:02d}.flac", 12 * CS + 100) for i in range(3)]


def reader_for(
    tmp_path: Path, origin: TrackOrigin, tracks: list[Track], delay: float = 0.0
) -> CachingReader:
    async def fetch(track: Track, offset: int, length: int) -> bytes:
        await trio.sleep(delay)
        return await origin.fetch(track, offset, length)

    async def next_track(track: Track) -> Track | None:
        i = tracks.index(track)
        return tracks[i + 1] if i + 1 < len(tracks) else None

    reader = CachingReader(
        new_store(tmp_path),
        fetch,
        readahead=2,
        readahead_after=2 * READ,
        prefetch_after=2 * READ,
        memory_bytes=4 * CS,
    )
    reader.enable_prefetch(next_track)
    return reader


def run(reader: CachingReader, body) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        await reader.open()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(reader.run)
                await body()
                nursery.cancel_scope.cancel()
        finally:
            await reader.aclose()

    trio.run(main)


def stored(reader: CachingReader, track: Track) -> list[bool]:
    chunks = -(-track.size // CS)
    return [reader.store.has(track.version_key, n) for n in range(chunks)]


def test_playing_fetches_the_rest_of_the_track_then_the_next_one(tmp_path: Path) -> None:
    origin, tracks = album(tmp_path)
    reader = reader_for(tmp_path, origin, tracks)
    first, second, third = tracks

    async def body() -> None:
        for offset in range(0, 4 * READ, READ):  # a player's first reads: one chunk
            got = await reader.read(first, offset, READ, handle=7)
            assert got == origin.content[first.path][offset : offset + READ]
        with trio.fail_after(10):
            while not all(stored(reader, first) + stored(reader, second)):
                await trio.sleep(0.01)
            while reader.write_behind.writing or reader.flights:
                await trio.sleep(0.01)
        assert not any(stored(reader, third))  # one track ahead, bounded
        assert reader.prefetch is not None and reader.prefetch.active() == []
        for n in range(len(stored(reader, second))):  # kept like played music
            assert reader.store.is_protected(second.version_key, n)

    run(reader, body)
    # Every chunk came from the origin once: prefetch and the player share the fetches.
    fetched = [(path, offset) for path, offset, _ in origin.fetches]
    assert len(fetched) == len(set(fetched))


def test_a_seek_cancels_the_prefetch(tmp_path: Path) -> None:
    origin, tracks = album(tmp_path)
    reader = reader_for(tmp_path, origin, tracks, delay=0.05)  # slow enough to catch it
    first = tracks[0]

    async def body() -> None:
        for offset in range(0, 3 * READ, READ):
            await reader.read(first, offset, READ, handle=7)
        prefetch = reader.prefetch
        assert prefetch is not None
        with trio.fail_after(5):
            while not prefetch.active():
                await trio.sleep(0.01)
        await reader.read(first, 9 * CS, READ, handle=7)  # the player seeks
        assert prefetch.active() == [] and prefetch.cancelled == 1
        await trio.sleep(0.3)  # whatever was in flight lands
        settled = len(origin.fetches)
        await trio.sleep(0.5)
        assert len(origin.fetches) == settled  # nothing more is fetched ahead
        assert not all(stored(reader, first))
        assert not any(reader.store.has(tracks[1].version_key, n) for n in range(13))

    run(reader, body)


def test_a_scanner_nibbling_at_many_tracks_starts_no_prefetch(tmp_path: Path) -> None:
    origin, tracks = album(tmp_path)
    reader = reader_for(tmp_path, origin, tracks)

    async def body() -> None:
        for i, track in enumerate(tracks):
            await reader.read(track, 0, 4096, handle=i)
            await reader.read(track, 4096, 8192, handle=i)
            await reader.read(track, track.size - 128, 128, handle=i)
        await trio.sleep(0.3)
        assert reader.prefetch is not None and reader.prefetch.started == 0

    run(reader, body)
    # Per track: the pieces the reads touched (3 at the head, 2 at the tail) -- no chunks.
    assert sum(length for _, _, length in origin.fetches) <= 3 * (4 * (CS // 16) + 100)


def test_a_closed_handle_stops_its_prefetch(tmp_path: Path) -> None:
    origin, tracks = album(tmp_path)
    reader = reader_for(tmp_path, origin, tracks, delay=0.05)

    async def body() -> None:
        for offset in range(0, 3 * READ, READ):
            await reader.read(tracks[0], offset, READ, handle=3)
        prefetch = reader.prefetch
        assert prefetch is not None
        with trio.fail_after(5):
            while not prefetch.active():
                await trio.sleep(0.01)
        reader.closed(3)  # the player closed the file (skipped to another album)
        assert prefetch.active() == []

    run(reader, body)


def test_the_next_track_is_the_next_on_the_album_by_disc_and_number(tmp_path: Path) -> None:
    from musicfs.catalog.db import Catalog
    from musicfs.catalog.tags import Tags

    cat = Catalog(tmp_path / "c.sqlite")

    def tags(album: str, disc: int | None, number: int | None) -> Tags:
        return Tags(title="t", albumartist="A", album=album, disc=disc, track=number)

    cat.upsert(
        "o",
        [
            ("z/d1-02.flac", 1, 1, None, tags("Album", 1, 2), None),
            ("a/d2-01.flac", 1, 1, None, tags("Album", 2, 1), None),
            ("m/d1-01.flac", 1, 1, None, tags("Album", 1, 1), None),
            ("other.flac", 1, 1, None, tags("Other", 1, 3), None),
            ("loose.flac", 1, 1, None, Tags(title="loose"), None),
        ],
    )
    by_path = {t.path: t for t in cat.tracks()}

    def following(path: str) -> str | None:
        nxt = cat.next_in_album(by_path[path].id)
        return None if nxt is None else nxt.path

    assert following("m/d1-01.flac") == "z/d1-02.flac"
    assert following("z/d1-02.flac") == "a/d2-01.flac"  # disc 2 after disc 1
    assert following("a/d2-01.flac") is None  # the album's end
    assert following("other.flac") is None
    assert following("loose.flac") is None  # no album: nothing to prefetch
    cat.close()
