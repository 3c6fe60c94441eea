"""Layer 1: the caching reader over a real store and a real local origin -- exact bytes,
only needed ranges, verification and repair, single flight, read-ahead, full and
unusable caches, a hung cache disk."""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from musicfs import failpoints
from musicfs.cache.chunkfile import HEADER_SIZE, chunk_hash
from musicfs.cache.modes import CacheMode
from musicfs.cache.readahead import READAHEAD_IN_FLIGHT
from musicfs.cache.reader import CachingReader
from musicfs.cache.store_lookup import STALLED_STORE_WAIT
from musicfs.catalog.model import Track
from musicfs.cli import format_cache
from tests.support.faulty_store import FaultyStore, TrackOrigin

CS = 64 * 1024
PIECE = 16 * 1024  # stands for FUSE's 128 KiB pieces of a 1 MiB chunk


@pytest.fixture
def origin(tmp_path: Path) -> TrackOrigin:
    o = TrackOrigin(tmp_path / "origin")
    o.add_many([10 * CS + 1234, 3 * CS, 100, 0])
    return o


def new_store(tmp_path: Path, **kw: int) -> FaultyStore:
    opts = {"chunk_size": CS, "max_size": 64 * CS, "min_free": 0}
    opts.update(kw)
    return FaultyStore(tmp_path / "cache", **opts)


def run(
    fn: Callable[[CachingReader], Awaitable[None]],
    store: FaultyStore,
    origin: TrackOrigin,
    *,
    background: bool = False,
    **kw: float,
) -> CachingReader:
    reader = CachingReader(store, origin.fetch, **kw)  # type: ignore[arg-type]

    async def main() -> None:
        await reader.open()
        try:
            if background:
                async with trio.open_nursery() as nursery:
                    await nursery.start(reader.run)
                    await fn(reader)
                    nursery.cancel_scope.cancel()
            else:
                await fn(reader)
        finally:
            await reader.aclose()

    trio.run(main)
    return reader


async def read_all(reader: CachingReader, origin: TrackOrigin, name: str, piece: int) -> bytes:
    track = origin.tracks[name]
    out = bytearray()
    offset = 0
    while True:
        data = await reader.read(track, offset, piece)
        if not data:
            return bytes(out)
        out += data
        offset += len(data)


def cached(tmp_path: Path, origin: TrackOrigin, name: str) -> Track:
    """``name`` read once through a reader, so every chunk of it is in the store."""

    async def fill(reader: CachingReader) -> None:
        await read_all(reader, origin, name, CS)

    run(fill, new_store(tmp_path), origin)
    return origin.tracks[name]


def test_reads_return_the_origin_bytes_at_any_offset_and_size(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    async def body(reader: CachingReader) -> None:
        for name, content in origin.content.items():
            track = origin.tracks[name]
            for offset, size in [
                (0, 1),
                (0, PIECE),
                (CS - 10, 20),  # across a chunk boundary
                (CS, CS),
                (5, 3 * CS),  # three chunks in one read
                (max(0, len(content) - 7), 100),  # the tail
                (len(content), 10),  # at EOF
                (len(content) + 5, 10),  # past EOF
            ]:
                assert await reader.read(track, offset, size) == content[offset : offset + size]

    for background in (False, True):
        run(body, new_store(tmp_path), origin, background=background)


def test_a_miss_fetches_only_the_piece_it_needs(tmp_path: Path, origin: TrackOrigin) -> None:
    track = origin.tracks["t0.flac"]
    piece = CS // 16

    async def body(reader: CachingReader) -> None:
        await reader.read(track, 3 * CS + 5, 10)
        await reader.read(track, 10 * CS + 1000, 10)
        await reader.read(track, 5 * CS - 10, 20)  # across a chunk boundary: two pieces

    run(body, new_store(tmp_path), origin)
    assert origin.fetches == [
        ("t0.flac", 3 * CS, piece),
        ("t0.flac", 10 * CS, 1234),
        ("t0.flac", 5 * CS - piece, piece),
        ("t0.flac", 5 * CS, piece),
    ]


def test_cached_chunks_survive_a_restart_and_need_no_origin(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    async def body(reader: CachingReader) -> None:
        for name, content in origin.content.items():
            assert await read_all(reader, origin, name, PIECE) == content

    run(body, new_store(tmp_path), origin, background=True)
    fetched = len(origin.fetches)
    # Each byte once: pieces until the run counts as playback, whole chunks after.
    assert sum(length for _, _, length in origin.fetches) == sum(map(len, origin.content.values()))
    run(body, new_store(tmp_path), origin)
    assert len(origin.fetches) == fetched


def test_a_chunk_is_read_and_hashed_once_for_all_its_pieces(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    async def fill(reader: CachingReader) -> None:
        await read_all(reader, origin, "t1.flac", CS)

    run(fill, new_store(tmp_path), origin)
    store = new_store(tmp_path)

    async def body(reader: CachingReader) -> None:
        assert await read_all(reader, origin, "t1.flac", PIECE) == origin.content["t1.flac"]

    reader = run(body, store, origin)
    assert store.calls["read"] == 3  # 3 chunks, 12 pieces
    assert reader.counters.memory_hits == 12 - 3
    assert store.counters.hits == 3


@pytest.mark.parametrize("damage", ["bit-flip", "truncate", "directory"])
def test_a_corrupt_chunk_is_never_served_and_is_repaired(
    tmp_path: Path, origin: TrackOrigin, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    content = origin.content["t1.flac"]
    store = new_store(tmp_path)

    def corrupt() -> None:
        path = store.chunk_path(chunk_hash(content[CS : 2 * CS]))
        raw = bytearray(path.read_bytes())
        if damage == "bit-flip":
            raw[HEADER_SIZE + 100] ^= 0x01
            path.write_bytes(bytes(raw))
        elif damage == "truncate":
            path.write_bytes(bytes(raw[:-1]))
        else:
            path.unlink()
            path.mkdir()

    async def body(reader: CachingReader) -> None:
        assert await read_all(reader, origin, "t1.flac", CS) == content
        corrupt()  # under the running reader, as on a live mount
        fetched = len(origin.fetches)
        assert await read_all(reader, origin, "t1.flac", PIECE) == content
        assert origin.fetches[fetched:] == [("t1.flac", CS, CS)]
        assert await read_all(reader, origin, "t1.flac", PIECE) == content

    with caplog.at_level(logging.WARNING):
        reader = run(body, store, origin, memory_bytes=1)
    assert reader.counters.repaired == 1
    assert "'t1.flac' chunk 1 repaired" in caplog.text
    # the repair was stored
    again = new_store(tmp_path)
    again.open()
    assert again.get(origin.tracks["t1.flac"].version_key, 1, CS) == content[CS : 2 * CS]
    again.close()


def test_a_rotting_disk_never_reaches_the_player(tmp_path: Path, origin: TrackOrigin) -> None:
    async def fill(reader: CachingReader) -> None:
        await read_all(reader, origin, "t0.flac", CS)

    run(fill, new_store(tmp_path), origin)
    store = new_store(tmp_path)
    store_open = store.open
    store.open = lambda: (store_open(), setattr(store, "corrupt_reads", True))[0]  # type: ignore[method-assign]

    async def body(reader: CachingReader) -> None:
        assert await read_all(reader, origin, "t0.flac", PIECE) == origin.content["t0.flac"]

    reader = run(body, store, origin)
    assert reader.counters.repaired == 11
    assert reader.counters.store_hits == 0


def test_concurrent_misses_of_one_chunk_fetch_it_once(tmp_path: Path, origin: TrackOrigin) -> None:
    failpoints.set("reader.fetch", "sleep(200)")
    track = origin.tracks["t0.flac"]
    content = origin.content["t0.flac"]
    results: list[bytes] = []

    async def body(reader: CachingReader) -> None:
        async def one(i: int) -> None:
            results.append(await reader.read(track, 2 * CS + i * 100, 100))

        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(one, i)

    for background in (False, True):
        origin.fetches.clear()
        results.clear()
        reader = run(body, new_store(tmp_path / str(background)), origin, background=background)
        assert origin.fetches == [("t0.flac", 2 * CS, CS // 16)]  # the one piece they touch
        assert sorted(results) == sorted(content[2 * CS + i * 100 :][:100] for i in range(10))
        assert reader.counters.shared_fetches == 9


def test_sequential_reads_read_ahead_a_bounded_number_of_chunks(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    track = origin.tracks["t0.flac"]

    async def body(reader: CachingReader) -> None:
        await reader.read(track, 0, PIECE)
        await reader.read(track, PIECE, PIECE)
        with trio.fail_after(10):
            while sum(length for _, _, length in origin.fetches) < 3 * CS:
                await trio.sleep(0.01)
        await trio.sleep(0.2)
        # only chunks 1 and 2 ahead (in one range or two), never the whole file
        assert covered(origin.fetches) == [(0, 3 * CS)]
        assert sum(length for _, _, length in origin.fetches) == 3 * CS
        # read-ahead chunks are served from memory without another fetch
        fetched = len(origin.fetches)
        assert await reader.read(track, CS, CS) == origin.content["t0.flac"][CS : 2 * CS]
        assert len(origin.fetches) == fetched

    reader = run(
        body, new_store(tmp_path), origin, background=True, readahead=2, readahead_after=PIECE
    )
    assert reader.counters.readahead >= 2


def covered(fetches: list[tuple[str, int, int]]) -> list[tuple[int, int]]:
    """The byte ranges the fetches covered, merged."""
    spans: list[tuple[int, int]] = []
    for _, offset, length in sorted(fetches, key=lambda f: f[1]):
        if spans and offset <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], offset + length))
        else:
            spans.append((offset, offset + length))
    return spans


def test_a_stream_reads_ahead_in_spans_as_large_as_the_origin_delivers_quickly(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    """Once the origin's rate is known, read-ahead fetches several chunks per request (one
    S3 GET, one SFTP call) -- every byte once and exactly the origin's; at a slow rate the
    ranges stay at ``part_bytes``, so each still ends well within the origin's timeout."""
    track = origin.tracks["t0.flac"]
    content = origin.content["t0.flac"]
    limits: list[int] = []

    async def stream(reader: CachingReader) -> None:
        assert await read_all(reader, origin, "t0.flac", PIECE) == content
        limits.append(reader.fetcher.span_limit())

    reader = run(
        stream,
        new_store(tmp_path),
        origin,
        background=True,
        readahead=8,
        readahead_after=PIECE,
        part_bytes=CS // 2,
        span_bytes=4 * CS,
    )
    assert limits == [4 * CS]  # a local origin: far faster than 4 chunks in SPAN_SECONDS
    assert max(length for _, _, length in origin.fetches) > CS  # spans of several chunks
    assert covered(origin.fetches) == [(0, track.size)]
    assert sum(length for _, _, length in origin.fetches) == track.size  # each byte once
    assert reader.counters.readahead >= 2

    slow = CachingReader(new_store(tmp_path / "slow"), origin.fetch, part_bytes=CS // 2)  # type: ignore[arg-type]
    slow.fetcher.note_rate(CS, 10.0)  # 6.4 KB/s: a span would not finish in time
    assert slow.fetcher.span_limit() == CS // 2


def test_read_ahead_spans_in_flight_stay_bounded(tmp_path: Path, origin: TrackOrigin) -> None:
    """However the spans fall, at most READAHEAD_IN_FLIGHT read-ahead fetches run at once
    (besides the player's own read): a slow origin never gets a window's worth of
    requests queued on its few connections."""
    content = origin.content["t0.flac"]
    running, peak = 0, 0

    async def slow_fetch(track: Track, offset: int, length: int) -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await trio.sleep(0.02)
            return await origin.fetch(track, offset, length)
        finally:
            running -= 1

    async def stream(reader: CachingReader) -> None:
        assert await read_all(reader, origin, "t0.flac", PIECE) == content

    reader = CachingReader(
        new_store(tmp_path),
        slow_fetch,
        readahead=8,
        readahead_after=PIECE,
        part_bytes=CS,
        span_bytes=CS,  # one chunk a span: the most spans a window can make
    )

    async def main() -> None:
        await reader.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(reader.run)
            await stream(reader)
            nursery.cancel_scope.cancel()
        await reader.aclose()

    trio.run(main)
    assert reader.counters.readahead >= 2
    assert peak <= READAHEAD_IN_FLIGHT + 1, peak


def test_a_tag_parser_nibbling_at_the_header_does_not_read_ahead(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    track = origin.tracks["t0.flac"]

    async def body(reader: CachingReader) -> None:
        offset = 0
        for size in (4, 10, 100, 4096, 30_000):  # sequential, but a few KiB in all
            await reader.read(track, offset, size)
            offset += size
        await trio.sleep(0.3)

    reader = run(body, new_store(tmp_path), origin, background=True)
    # Only the pieces it touched, each once -- not a chunk, and nothing ahead.
    piece = CS // 16
    touched = -(-(4 + 10 + 100 + 4096 + 30_000) // piece) * piece
    assert origin.fetches == [
        ("t0.flac", 0, piece),
        ("t0.flac", piece, piece),
        ("t0.flac", 2 * piece, touched - 2 * piece),
    ]
    assert reader.counters.readahead == 0


def test_random_access_does_not_read_ahead(tmp_path: Path, origin: TrackOrigin) -> None:
    track = origin.tracks["t0.flac"]

    async def body(reader: CachingReader) -> None:
        await reader.read(track, 5 * CS, 10)
        await reader.read(track, 2 * CS, 10)
        await trio.sleep(0.3)

    run(body, new_store(tmp_path), origin, background=True)
    assert len(origin.fetches) == 2


def test_origin_errors_reach_the_player_and_nothing_is_cached(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    track = origin.tracks["t0.flac"]

    async def body(reader: CachingReader) -> None:
        failpoints.set("reader.fetch", "1*error(EIO)")
        with pytest.raises(OSError) as info:
            await reader.read(track, 0, 10)
        assert info.value.errno == errno.EIO
        assert await reader.read(track, 0, 10) == origin.content["t0.flac"][:10]

    run(body, new_store(tmp_path), origin)


def test_a_file_that_changed_at_the_origin_is_never_cached(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    track = origin.tracks["t1.flac"]
    (origin.root / "t1.flac").write_bytes(origin.content["t1.flac"][: CS + 10])  # shrank

    async def body(reader: CachingReader) -> None:
        # The pool refuses a version that is not the catalogued one; whatever a fetch
        # returns short, the reader never stores a chunk of the wrong length.
        with pytest.raises(OSError) as info:
            await reader.read(track, CS, CS)
        assert info.value.errno == errno.EIO

    store = new_store(tmp_path)
    run(body, store, origin)
    assert store.counters.stored == 0


async def _short_fetch(track: object, offset: int, length: int) -> bytes:
    return b"x" * (length // 2)


def test_a_short_fetch_is_passed_on_but_never_cached(tmp_path: Path, origin: TrackOrigin) -> None:
    store = new_store(tmp_path)
    reader = CachingReader(store, _short_fetch)  # type: ignore[arg-type]

    async def main() -> None:
        await reader.open()
        assert await reader.read(origin.tracks["t1.flac"], 0, CS) == b"x" * (CS // 2)
        await reader.aclose()

    trio.run(main)
    assert reader.counters.uncached == 1
    assert store.counters.stored == 0


def test_full_cache_serves_uncached_and_reports_degraded(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    store = new_store(tmp_path)
    store_open = store.open

    def open_then_fill():  # type: ignore[no-untyped-def]
        report = store_open()
        store.fail("write", errno.ENOSPC)
        return report

    store.open = open_then_fill  # type: ignore[method-assign]

    async def body(reader: CachingReader) -> None:
        assert await read_all(reader, origin, "t0.flac", PIECE) == origin.content["t0.flac"]
        status = reader.status()
        assert status["mode"] == CacheMode.DEGRADED
        assert status["reader"]["uncached"] >= 11  # pieces, then whole chunks
        assert store.counters.stored == 0

    run(body, store, origin)


def test_unusable_cache_is_passthrough_then_retried(tmp_path: Path, origin: TrackOrigin) -> None:
    (tmp_path / "cache").write_text("not a directory")
    track = origin.tracks["t0.flac"]
    content = origin.content["t0.flac"]

    async def body(reader: CachingReader) -> None:
        assert reader.status()["mode"] == CacheMode.PASSTHROUGH
        assert await reader.read(track, 7, 1000) == content[7:1007]
        assert origin.fetches == [("t0.flac", 7, 1000)]  # exactly the range asked for
        (tmp_path / "cache").unlink()  # the operator fixes it
        with trio.fail_after(10):
            while reader.status()["mode"] != CacheMode.NORMAL:
                await trio.sleep(0.02)
        assert await reader.read(track, 7, 1000) == content[7:1007]
        assert origin.fetches[-1] == ("t0.flac", 0, CS // 16)  # the piece, now cached

    reader = run(
        body,
        new_store(tmp_path),
        origin,
        background=True,
        retry_interval=0.1,
        maintain_interval=0.05,
    )
    assert reader.counters.passthrough_reads == 1


def test_cache_turning_read_only_mid_play_keeps_reads_correct(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    store = new_store(tmp_path)

    async def body(reader: CachingReader) -> None:
        track = origin.tracks["t0.flac"]
        content = origin.content["t0.flac"]
        assert await reader.read(track, 0, CS) == content[:CS]
        store.fail("open_temp", errno.EROFS)
        assert await reader.read(track, 3 * CS, CS) == content[3 * CS : 4 * CS]
        assert reader.status()["mode"] == CacheMode.PASSTHROUGH
        assert await read_all(reader, origin, "t0.flac", PIECE) == content

    run(body, store, origin)


def take_origin_offline(origin: TrackOrigin) -> None:
    origin.root.rename(origin.root.with_name("origin-gone"))


def test_read_only_cache_keeps_cached_audio_playing_with_the_origin_offline(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    store = new_store(tmp_path)
    content = origin.content["t1.flac"]

    async def body(reader: CachingReader) -> None:
        assert await read_all(reader, origin, "t1.flac", PIECE) == content  # cached
        store.fail("open_temp", errno.EROFS)  # the cache disk turns read-only
        track0 = origin.tracks["t0.flac"]
        assert await reader.read(track0, 0, 10) == origin.content["t0.flac"][:10]
        assert reader.status()["mode"] == CacheMode.PASSTHROUGH and reader.status()["serves_cached"]
        take_origin_offline(origin)
        fetched = len(origin.fetches)
        hits = reader.counters.store_hits
        assert await read_all(reader, origin, "t1.flac", PIECE) == content
        assert await reader.read(origin.tracks["t1.flac"], CS + 5, 7) == content[CS + 5 : CS + 12]
        assert len(origin.fetches) == fetched  # every byte from the cache
        assert reader.counters.store_hits >= hits + 3
        with pytest.raises(OSError):  # not cached, and the origin really is gone
            await reader.read(track0, 5 * CS, 10)

    run(body, store, origin, memory_bytes=0)  # no RAM copy: every read is a disk read


def test_read_only_cache_serves_a_corrupt_chunk_from_the_origin_and_leaves_it(
    tmp_path: Path, origin: TrackOrigin, caplog: pytest.LogCaptureFixture
) -> None:
    store = new_store(tmp_path)
    content = origin.content["t1.flac"]

    async def body(reader: CachingReader) -> None:
        await read_all(reader, origin, "t1.flac", CS)
        store.fail("open_temp", errno.EROFS)
        await reader.read(origin.tracks["t0.flac"], 0, 10)
        assert store.serves_cached
        path = store.chunk_path(chunk_hash(content[CS : 2 * CS]))
        raw = bytearray(path.read_bytes())
        raw[HEADER_SIZE + 100] ^= 0x01
        path.write_bytes(bytes(raw))
        del origin.fetches[:]
        with caplog.at_level(logging.WARNING):
            assert await read_all(reader, origin, "t1.flac", CS) == content
        assert origin.fetches == [("t1.flac", CS, CS)]  # only the bad chunk
        assert path.read_bytes() == bytes(raw)  # left in place: nothing is written
        assert "left in place" in caplog.text and "not re-stored" in caplog.text

    reader = run(body, store, origin, memory_bytes=0)
    assert reader.counters.repaired == 1


def test_read_only_cache_is_retried_at_the_retry_interval_and_recovers(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    store = new_store(tmp_path)
    track = origin.tracks["t0.flac"]
    content = origin.content["t0.flac"]

    async def body(reader: CachingReader) -> None:
        store.fail("open_temp", errno.EROFS)
        assert await reader.read(track, 0, 10) == content[:10]
        with trio.fail_after(10):  # the write behind the read finds out
            while not store.serves_cached:
                await trio.sleep(0.02)
        # Probed again and again (each probe tries a temp file), still unwritable. Waits
        # for the probes themselves: on a loaded machine housekeeping may run late, but
        # at the default interval (30 s) a second probe would never come within 10 s.
        probes = store.calls.get("open_temp", 0)
        since = trio.current_time()
        with trio.fail_after(10):
            while store.calls.get("open_temp", 0) - probes < 2:
                await trio.sleep(0.02)
        probed = store.calls.get("open_temp", 0) - probes
        # ... and never more often than the interval (load can only make probes rarer).
        assert probed <= (trio.current_time() - since) / 0.1 + 1, probed
        assert store.serves_cached
        store.heal()
        with trio.fail_after(10):
            while reader.status()["mode"] != CacheMode.NORMAL:
                await trio.sleep(0.02)
        assert await read_all(reader, origin, "t0.flac", PIECE) == content
        with trio.fail_after(10):
            while store.counters.stored < 10:  # chunk 0 stayed in RAM
                await trio.sleep(0.02)

    run(
        body,
        store,
        origin,
        background=True,
        retry_interval=0.1,
        maintain_interval=0.05,
    )


def test_a_hung_cache_disk_falls_back_to_the_origin_within_the_deadline(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    track = cached(tmp_path, origin, "t1.flac")

    async def body(reader: CachingReader) -> None:
        failpoints.set("cas.get.before_read", "1*sleep(3000)")
        started = time.monotonic()
        assert await reader.read(track, 0, 100) == origin.content["t1.flac"][:100]
        assert time.monotonic() - started < 2.5

    reader = run(body, new_store(tmp_path), origin, store_deadline=0.3)
    assert reader.counters.store_timeouts == 1


def test_a_stalled_cache_disk_costs_one_full_wait_then_short_ones(
    tmp_path: Path, origin: TrackOrigin, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk hangs: the first chunk waits store_deadline, later ones only
    STALLED_STORE_WAIT (a player stalls once, not on every chunk); when the disk answers
    in time again, the full wait is back."""

    track = cached(tmp_path, origin, "t0.flac")
    content = origin.content["t0.flac"]
    waits: list[float] = []

    async def body(reader: CachingReader) -> None:
        failpoints.set("cas.get.before_read", "sleep(3000)")
        for n in range(5):
            started = time.monotonic()
            assert await reader.read(track, n * CS, 100) == content[n * CS : n * CS + 100]
            waits.append(time.monotonic() - started)
        failpoints.clear()
        await trio.sleep(3.2)  # the disk "comes back": the blocked reads return
        assert await reader.read(track, 6 * CS, 100) == content[6 * CS : 6 * CS + 100]
        assert not reader.lookup.stalled

    with caplog.at_level(logging.WARNING, logger="musicfs.cache.reader"):
        reader = run(body, new_store(tmp_path), origin, store_deadline=0.6)
    assert 0.55 < waits[0] < 1.5, waits
    assert all(w < STALLED_STORE_WAIT + 0.3 for w in waits[1:]), waits
    assert reader.counters.store_timeouts == 5
    assert not reader.status()["disk_stalled"]  # back to normal at the end
    stalls = [r for r in caplog.records if "took over" in r.getMessage()]
    assert len(stalls) == 1  # one line for the stall, not one per chunk
    assert any("answers in time again" in r.getMessage() for r in caplog.records)


def test_a_stalled_cache_disk_is_waited_for_when_the_origin_cannot_help(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    track = cached(tmp_path, origin, "t0.flac")
    content = origin.content["t0.flac"]

    async def body(reader: CachingReader) -> None:
        failpoints.set("cas.get.before_read", "1*sleep(1500)")
        assert await reader.read(track, 0, 100) == content[:100]  # stall: origin served
        assert reader.lookup.stalled
        assert "cache disk not answering in time" in format_cache(reader.status())
        # The disk is slow (0.4 s a chunk, over the short wait) and the origin is gone:
        # the disk gets its full time after all, and the player its bytes.
        failpoints.set("cas.get.before_read", "sleep(400)")
        failpoints.set("origin.local.read", "error(EIO)")
        started = time.monotonic()
        assert await reader.read(track, 2 * CS, 100) == content[2 * CS : 2 * CS + 100]
        assert time.monotonic() - started < 1.0 + 0.5

    run(body, new_store(tmp_path), origin, store_deadline=1.0)


def test_status_reports_mode_size_and_counters(tmp_path: Path, origin: TrackOrigin) -> None:
    async def body(reader: CachingReader) -> None:
        await read_all(reader, origin, "t1.flac", CS)
        status = reader.status()
        assert status["mode"] == CacheMode.NORMAL and status["reason"] is None
        assert status["used_bytes"] == 3 * CS and status["chunks"] == 3
        assert status["max_size"] == 64 * CS
        assert status["counters"]["stored"] == 3
        assert status["reader"]["origin_fetches"] == 3

    run(body, new_store(tmp_path), origin)


def test_cache_stays_under_max_size_while_playing_a_bigger_library(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    big = TrackOrigin(tmp_path / "big")
    big.add_many([7 * CS + 11] * 8)  # 56+ chunks through an 8-chunk cache
    store = new_store(tmp_path, max_size=8 * (CS + HEADER_SIZE))
    peak = 0

    async def body(reader: CachingReader) -> None:
        nonlocal peak
        for _ in range(2):
            for name, content in big.content.items():
                assert await read_all(reader, big, name, PIECE) == content
                peak = max(peak, store.used)

    run(body, store, big, background=True)
    assert peak <= store.max_size
    assert store.counters.evicted > 40


def test_write_behind_stores_what_queued_up_in_one_batch(tmp_path: Path) -> None:
    """A slow cache disk: the chunks fetched while one batch is written are stored
    together as the next batch (one index commit), not one by one."""
    small = TrackOrigin(tmp_path / "small")
    small.add_many([700] * 20)
    store = new_store(tmp_path)
    failpoints.set("cas.put.before_write", "sleep(300)")
    batches: list[int] = []
    put_many = store.put_many

    def counting(items):  # type: ignore[no-untyped-def]
        batches.append(len(items))
        return put_many(items)

    store.put_many = counting  # type: ignore[method-assign]

    async def body(reader: CachingReader) -> None:
        for name, content in small.content.items():
            assert await read_all(reader, small, name, PIECE) == content
        with trio.fail_after(20):
            while store.counters.stored < 20:
                await trio.sleep(0.01)

    reader = run(body, store, small, background=True)
    assert sum(batches) == 20
    assert len(batches) <= 5, batches
    assert reader.counters.uncached == 0


def test_write_behind_holds_at_most_max_pending_bytes(tmp_path: Path, origin: TrackOrigin) -> None:
    """A cache disk slower than the reads: reads wait for room in the queue only
    ``put_wait``, then are served uncached -- fetched data never piles up in memory."""
    failpoints.set("cas.put.before_write", "sleep(400)")
    store = new_store(tmp_path)
    peak = 0

    async def body(reader: CachingReader) -> None:
        nonlocal peak

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, reader.write_behind.pending)
                await trio.sleep(0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            started = time.monotonic()
            assert await read_all(reader, origin, "t0.flac", CS) == origin.content["t0.flac"]
            while reader.flights:  # reads are answered before their chunks are stored
                await trio.sleep(0.01)
            assert time.monotonic() - started < 10
            nursery.cancel_scope.cancel()

    reader = run(
        body, store, origin, background=True, readahead=0, max_pending_bytes=2 * CS, put_wait=0.05
    )
    assert 0 < peak <= 2 * CS
    assert reader.counters.uncached > 0


def test_a_reload_shrinks_the_cache_in_the_background(tmp_path: Path, origin: TrackOrigin) -> None:
    from musicfs.cache.settings import CacheSettings

    store = new_store(tmp_path)

    async def body(reader: CachingReader) -> None:
        await read_all(reader, origin, "t0.flac", CS)
        with trio.fail_after(10):
            while store.counters.stored < 11:  # write-behind catches up
                await trio.sleep(0.02)
        await reader.reconfigure(CacheSettings(max_size=4 * CS, min_free=0, retry_interval=5))
        assert reader.housekeeping.retry_interval == 5
        with trio.fail_after(10):
            while store.used > 4 * CS:
                await trio.sleep(0.02)

    run(body, store, origin, background=True, maintain_interval=30)


def test_status_line_for_musicfs_status(tmp_path: Path, origin: TrackOrigin) -> None:
    async def body(reader: CachingReader) -> None:
        await read_all(reader, origin, "t1.flac", CS)
        line = format_cache(reader.status())
        assert line.startswith("  cache: normal, 0 of 4 MiB in 3 chunks")
        assert "origin fetches 3" in line
        store.fail("open_temp", errno.EROFS)
        await reader.read(origin.tracks["t0.flac"], 0, 10)
        line = format_cache(reader.status())
        assert line.startswith("  cache: passthrough (writing a chunk: ")
        assert "EROFS)), stored chunks still served read-only, 0 of 4 MiB in 3 chunks" in line

    store = new_store(tmp_path)
    run(body, store, origin)


def test_a_stream_fetches_the_rest_of_its_chunk_and_the_next_in_one_range(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    """The read that makes a cursor streaming finds its chunk unstarted: what is left of
    it and the next chunk come in one origin range, not in parts and then a read-ahead."""
    track = origin.tracks["t0.flac"]
    content = origin.content["t0.flac"]

    async def body(reader: CachingReader) -> None:
        for offset in range(0, 3 * PIECE, PIECE):  # a scanner-sized run: pieces only
            assert await reader.read(track, offset, PIECE) == content[offset : offset + PIECE]
        assert all(length == PIECE for _, _, length in origin.fetches)
        # The fourth read makes it a stream: the rest of chunk 0 and chunk 1 at once.
        assert await reader.read(track, 3 * PIECE, PIECE) == content[3 * PIECE : 4 * PIECE]
        assert origin.fetches[3] == ("t0.flac", 3 * PIECE, 2 * CS - 3 * PIECE)
        assert await read_all(reader, origin, "t0.flac", PIECE) == content

    run(body, new_store(tmp_path), origin, background=True, readahead_after=4 * PIECE)


def test_read_ahead_goes_on_while_the_cache_disk_catches_up(
    tmp_path: Path, origin: TrackOrigin
) -> None:
    """A slow cache disk holds fetched chunks waiting for room in the write queue; a
    read-ahead span's origin slot is free once its bytes have arrived, not once the queue
    has taken them -- and a chunk waiting in the queue is served from it, not fetched
    again when the memory cache has dropped it."""
    track = origin.tracks["t0.flac"]
    content = origin.content["t0.flac"]

    async def body(reader: CachingReader) -> None:
        failpoints.set("cas.put.before_commit", "sleep(1000)")  # every batch: 1 s
        for offset in range(0, 3 * CS, PIECE):  # a stream: chunk 0 read, 1-2 read ahead
            assert await reader.read(track, offset, PIECE) == content[offset : offset + PIECE]
        with trio.fail_after(0.8):  # well before the disk has written the first batch
            while reader.write_behind.waiting == 0:  # a read-ahead chunk waits for room
                await trio.sleep(0.01)
        assert reader.readahead.pending == 0  # the origin slots are free again
        # Chunk 0 dropped from memory (2 chunks of it), not stored yet: from the queue.
        assert (track.version_key, 0) not in reader.memory
        fetched = len(origin.fetches)
        assert await reader.read(track, 0, CS) == content[:CS]
        assert len(origin.fetches) == fetched
        failpoints.clear()

    reader = run(
        body,
        new_store(tmp_path),
        origin,
        background=True,
        readahead_after=PIECE,
        memory_bytes=2 * CS,
        max_pending_bytes=CS,
        put_wait=5.0,
    )
    assert reader.counters.origin_bytes <= 5 * CS  # nothing fetched twice
