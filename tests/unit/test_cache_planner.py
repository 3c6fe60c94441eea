"""Layer 1: fetch planning -- a first read fetches a piece, a sustained sequential read
grows its read-ahead window by doubling, memory pressure shrinks it, each file handle has
its own cursor, a read is answered before the rest of its chunk has arrived, and pieces
survive the loss of the index like chunks do."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import trio

from musicfs.cache.planner import Planner, piece_key, piece_size
from musicfs.cache.reader import CachingReader
from musicfs.catalog.model import Track
from tests.support.faulty_store import FaultyStore, TrackOrigin

CS = 64 * 1024
PIECE = piece_size(CS)


def test_the_window_starts_at_one_chunk_and_doubles_on_each_stall() -> None:
    planner = Planner(chunk_size=CS, stream_after=2 * PIECE, max_window=8)
    cursor = planner.cursor(b"v" * 16, None)
    assert not planner.advance(cursor, 0, PIECE)  # a first read
    assert not planner.streaming(cursor)
    assert planner.advance(cursor, PIECE, 2 * PIECE)
    assert planner.streaming(cursor)
    planner.ensure_window(cursor)
    windows = [cursor.window]
    for _ in range(5):
        planner.stalled(cursor)
        windows.append(cursor.window)
    assert windows == [1, 2, 4, 8, 8, 8]
    assert planner.ahead(cursor, 0, 100 * CS) == range(1, 9)
    # Refilled once half the window is read, in one batch (one origin range), and only
    # what is new.
    assert planner.ahead(cursor, 1, 100 * CS) == range(0)
    assert planner.ahead(cursor, 3, 100 * CS) == range(0)
    assert planner.ahead(cursor, 4, 100 * CS) == range(9, 13)
    assert planner.ahead(cursor, 98, 100 * CS) == range(99, 100)  # never past the end
    planner.shrink()  # memory pressure
    assert cursor.window == 4
    assert not planner.advance(cursor, 50 * CS, 50 * CS + 10)  # a seek starts over
    assert cursor.window == 0 and not planner.streaming(cursor) and cursor.seeks == 1


def new_store(tmp_path: Path) -> FaultyStore:
    return FaultyStore(tmp_path / "cache", chunk_size=CS, max_size=256 * CS, min_free=0)


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


def test_a_first_read_is_small_and_a_sustained_one_grows_its_window(tmp_path: Path) -> None:
    origin = TrackOrigin(tmp_path / "origin")
    track = origin.add("long.flac", 40 * CS)
    content = origin.content["long.flac"]
    delay = 0.02

    async def slow(t: Track, offset: int, length: int) -> bytes:
        await trio.sleep(delay)  # a link: every request costs a round trip
        return await origin.fetch(t, offset, length)

    reader = CachingReader(new_store(tmp_path), slow, readahead=8, readahead_after=2 * PIECE)
    windows: list[int] = []

    async def body() -> None:
        assert await reader.read(track, 0, 4096) == content[:4096]
        assert origin.fetches == [("long.flac", 0, PIECE)]  # a piece, nothing ahead
        offset = 4096
        while offset < 30 * CS:
            got = await reader.read(track, offset, 32 * 1024)
            assert got == content[offset : offset + 32 * 1024]
            offset += len(got)
            windows.append(reader.planner.cursor(track.version_key, None).window)

    run(reader, body)
    assert windows[0] <= 2
    assert max(windows) == 8  # grown by doubling while the reads kept stalling
    assert set(windows) <= {1, 2, 4, 8}
    # Nothing read ahead beyond the window, however long the read went on.
    furthest = max(offset + length for _, offset, length in origin.fetches)
    assert furthest <= 30 * CS + 9 * CS


def test_memory_pressure_shrinks_the_windows(tmp_path: Path) -> None:
    origin = TrackOrigin(tmp_path / "origin")
    tracks = [origin.add(f"t{i}.flac", 40 * CS) for i in range(4)]

    async def slow(t: Track, offset: int, length: int) -> bytes:
        await trio.sleep(0.01)
        return await origin.fetch(t, offset, length)

    # Memory for 8 chunks: four streams cannot each read 8 chunks ahead.
    reader = CachingReader(
        new_store(tmp_path), slow, readahead=8, readahead_after=PIECE, memory_bytes=8 * CS
    )
    total: list[int] = []

    async def body() -> None:
        for offset in range(0, 20 * CS, 32 * 1024):
            for track in tracks:
                await reader.read(track, offset, 32 * 1024, handle=track.path)
            total.append(reader.planner.window_bytes())

    run(reader, body)
    assert max(total[5:]) <= 8 * CS  # halved whenever the windows outgrew half the memory


def test_each_handle_keeps_its_own_cursor(tmp_path: Path) -> None:
    origin = TrackOrigin(tmp_path / "origin")
    track = origin.add("shared.flac", 20 * CS)
    reader = CachingReader(new_store(tmp_path), origin.fetch, readahead_after=2 * PIECE)

    async def body() -> None:
        # A player at the start and a second program near the end, interleaved: with one
        # cursor per file, neither run would ever count as sequential.
        for i in range(4):
            await reader.read(track, i * PIECE, PIECE, handle=1)
            await reader.read(track, 15 * CS + i * PIECE, PIECE, handle=2)
        for handle in (1, 2):
            assert reader.planner.streaming(reader.planner.cursor(track.version_key, handle))
        reader.closed(1)
        assert not reader.planner.streaming(reader.planner.cursor(track.version_key, 1))

    run(reader, body)


def test_a_read_is_answered_before_the_rest_of_its_chunk_arrives(tmp_path: Path) -> None:
    origin = TrackOrigin(tmp_path / "origin")
    track = origin.add("t.flac", 4 * CS)
    content = origin.content["t.flac"]
    release = trio.Event()

    async def fetch(t: Track, offset: int, length: int) -> bytes:
        if offset % CS:  # every range but a chunk's first waits (a slow link)
            await release.wait()
        return await origin.fetch(t, offset, length)

    reader = CachingReader(
        new_store(tmp_path), fetch, readahead=0, readahead_after=PIECE, part_bytes=CS // 4
    )

    async def body() -> None:
        await reader.read(track, 0, PIECE)  # start the run...
        with trio.fail_after(5):
            # ... this one streams: chunk 1 is loaded whole, in four ranges at once; the
            # read of its head is answered by the first range alone.
            assert await reader.read(track, PIECE, PIECE) == content[PIECE : 2 * PIECE]
            started = time.monotonic()
            assert await reader.read(track, CS, PIECE) == content[CS : CS + PIECE]
            assert time.monotonic() - started < 2
        assert ("t.flac", CS, CS // 4) in origin.fetches
        release.set()
        with trio.fail_after(5):
            while reader.flights or reader.write_behind.writing:
                await trio.sleep(0.01)
        assert await trio.to_thread.run_sync(reader.store.has, track.version_key, 1)

    run(reader, body)


def test_pieces_are_re_adopted_when_the_index_is_lost(tmp_path: Path) -> None:
    origin = TrackOrigin(tmp_path / "origin")
    track = origin.add("t.flac", 4 * CS + 100)
    content = origin.content["t.flac"]
    reader = CachingReader(new_store(tmp_path), origin.fetch)

    async def body() -> None:
        await reader.read(track, 0, 100)
        await reader.read(track, track.size - 50, 50)
        with trio.fail_after(5):
            while reader.flights or reader.write_behind.writing:
                await trio.sleep(0.01)

    run(reader, body)
    shutil.rmtree(tmp_path / "cache" / "index")
    store = new_store(tmp_path)
    report = store.open()
    try:
        assert report is not None and report.adopted == 2
        assert store.get(track.version_key, piece_key(0), PIECE) == content[:PIECE]
        last = (track.size - 1) // PIECE
        assert store.get(track.version_key, piece_key(last), 100) == content[last * PIECE :]
        assert store.get(track.version_key, 0, CS) is None  # a piece is not its chunk
    finally:
        store.close()
