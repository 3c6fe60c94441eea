"""Layer 1: the scan-resistant eviction policy (``cache/policy.py``) -- played chunks and
pinned chunks survive a tag scan of a library ten times the cache, in the ledger alone,
through the store, through the reader, and across a restart."""

from __future__ import annotations

from pathlib import Path

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from musicfs.cache.planner import piece_key
from musicfs.cache.policy import PROTECTED_SHARE, ChunkLedger
from musicfs.cache.reader import CachingReader
from tests.support.faulty_store import FaultyStore, TrackOrigin

CS = 16 * 1024
CACHE_CHUNKS = 40


def test_probation_goes_first_and_a_scanner_touching_twice_promotes_nothing() -> None:
    ledger = ChunkLedger()
    ledger.set_protected_cap(10 * 100)
    played = [bytes([1, i]) for i in range(5)]
    scanned = [bytes([2, i]) for i in range(5)]
    for digest in played:
        ledger.add(digest, 100, protect=True)
    for digest in scanned:
        ledger.add(digest, 100)
        ledger.touch(digest)  # a scanner re-reading the same head
        ledger.touch(digest)
    for digest in played:
        ledger.touch(digest)  # played first, touched least recently
    assert ledger.victims(500) == scanned
    assert ledger.victims(400) == [*scanned, played[0]]


def test_the_protected_segment_is_capped_and_demotes_its_oldest() -> None:
    ledger = ChunkLedger()
    ledger.set_protected_cap(300)
    for i in range(5):
        ledger.add(bytes([i]), 100, protect=True)
    assert list(ledger.protected) == [bytes([2]), bytes([3]), bytes([4])]
    assert list(ledger.probation) == [bytes([0]), bytes([1])]
    assert ledger.protected_used == 300
    assert ledger.segment_changes[bytes([0])] is False


def test_chunks_fetched_ahead_of_a_player_go_before_the_played_ones() -> None:
    ledger = ChunkLedger()
    ledger.set_protected_cap(300)
    played = [bytes([1, i]) for i in range(3)]
    for digest in played:
        ledger.add(digest, 100, protect=True)
    ahead = bytes([2, 0])  # the next track's prefetch, past the cap
    ledger.add(ahead, 100)
    assert ledger.promote(ahead, ahead=True)
    assert list(ledger.protected) == played  # the guess is demoted, not the music
    assert list(ledger.probation) == [ahead]
    ledger.set_protected_cap(400)
    assert ledger.promote(ahead, ahead=True)
    assert list(ledger.protected) == [ahead, *played]
    assert ledger.promote(played[0], ahead=True)  # played already: it keeps its place
    assert list(ledger.protected) == [ahead, *played]
    assert ledger.promote(ahead)  # the player reached it: now the most recent
    assert list(ledger.protected) == [*played, ahead]


def test_a_chunk_marked_ahead_is_promoted_again_once_played(tmp_path: Path) -> None:
    reader = CachingReader(new_store(tmp_path), TrackOrigin(tmp_path / "origin").fetch)
    wb = reader.write_behind
    wb.note_played(b"v", 0, 1, ahead=True)
    wb.note_played(b"v", 1, 1, ahead=True)  # asked again: nothing new
    wb.note_played(b"v", 1, 2)  # the player reads 1 and 2
    wb.note_played(b"v", 2, 2, ahead=True)  # read ahead of a second handle: stays played
    assert wb.promote_queue == [
        ((b"v", 0), True),
        ((b"v", 1), True),
        ((b"v", 1), False),
        ((b"v", 2), False),
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "hot", "touch", "promote", "ahead", "forget", "pin", "cap"]),
            st.integers(0, 15),
        ),
        max_size=80,
    )
)
def test_the_account_stays_exact_whatever_happens(ops: list[tuple[str, int]]) -> None:
    ledger = ChunkLedger()
    ledger.set_protected_cap(500)
    sizes: dict[bytes, int] = {}
    for op, i in ops:
        digest = bytes([i])
        if op in ("add", "hot") and digest not in ledger:
            ledger.add(digest, 50 + i, protect=op == "hot")
            sizes[digest] = 50 + i
        elif op == "touch":
            ledger.touch(digest, protect=i % 2 == 0)
        elif op in ("promote", "ahead"):
            ledger.promote(digest, ahead=op == "ahead")
        elif op == "forget":
            ledger.forget(digest)
            sizes.pop(digest, None)
        elif op == "pin" and digest in ledger:
            ledger.set_pins(digest, 1)
        elif op == "cap":
            ledger.set_protected_cap(i * 40)
        assert ledger.used == sum(sizes.values())
        assert ledger.protected_used == sum(ledger.protected.values())
        assert ledger.protected_used <= ledger.protected_cap or len(ledger.protected) <= 1
        assert dict(ledger.items()) == sizes
        victims = ledger.victims(0)
        assert not any(ledger.pins.get(d) for d in victims)
        assert set(victims) | set(ledger.pins) == set(sizes)


def new_store(tmp_path: Path) -> FaultyStore:
    return FaultyStore(tmp_path / "cache", chunk_size=CS, max_size=CACHE_CHUNKS * CS, min_free=0)


def play_then_scan(tmp_path: Path, *, pin_one: bool = False) -> tuple[TrackOrigin, list[str]]:
    """An album of 3 tracks (4 chunks each) played through the reader, then a scanner
    reading head and tail of 200 tracks -- 400 chunks, ten times the cache."""
    origin = TrackOrigin(tmp_path / "origin")
    album = [origin.add(f"album{i}.flac", 4 * CS).path for i in range(3)]
    library = [origin.add(f"lib{i}.flac", 3 * CS + 100) for i in range(200)]
    store = new_store(tmp_path)
    reader = CachingReader(
        store,
        origin.fetch,
        readahead=0,
        readahead_after=8192,
        memory_bytes=2 * CS,
        max_pending_bytes=2 * CS,
    )

    async def main() -> None:
        await reader.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(reader.run)
            for name in album:
                track = origin.tracks[name]
                for offset in range(0, track.size, 4096):  # a player's small reads
                    got = await reader.read(track, offset, 4096)
                    assert got == origin.content[name][offset : offset + 4096]
            await wait_until_written(reader)
            if pin_one:
                lone = origin.add("lone.flac", CS)
                assert await reader.read(lone, 0, 100)  # a head only: a probationary piece
                await wait_until_written(reader)
                assert await trio.to_thread.run_sync(store.pin, lone.version_key, piece_key(0))
            for track in library:
                await reader.read(track, 0, 3000)  # ffprobe: the head ...
                await reader.read(track, track.size - 128, 128)  # ... and the tags at the end
                await reader.read(track, 0, 3000)  # ... and the head again
            await wait_until_written(reader)
            nursery.cancel_scope.cancel()
        await reader.aclose()

    trio.run(main)
    return origin, album


async def wait_until_written(reader: CachingReader) -> None:
    with trio.fail_after(10):
        while (
            reader.write_behind.writing
            or reader.write_behind.queue
            or reader.write_behind.promote_queue
        ):
            await trio.sleep(0.01)


def test_played_album_survives_a_scan_of_ten_times_the_cache(tmp_path: Path) -> None:
    origin, album = play_then_scan(tmp_path, pin_one=True)
    store = new_store(tmp_path)
    store.open()
    try:
        assert store.used <= CACHE_CHUNKS * CS
        for name in album:
            track = origin.tracks[name]
            for n in range(4):
                assert (
                    store.get(track.version_key, n, CS)
                    == origin.content[name][n * CS : (n + 1) * CS]
                ), (name, n)
                assert store.is_protected(track.version_key, n)  # and after a restart
        lone = origin.tracks["lone.flac"]
        assert store.has(lone.version_key, piece_key(0))  # pinned in probation: kept
        # The scan's chunks were cached too, as far as probation had room.
        scanned = sum(
            store.has(t.version_key, piece_key(0))
            for n, t in origin.tracks.items()
            if n.startswith("lib")
        )
        assert scanned > 0
        assert store.ledger.protected_used <= CACHE_CHUNKS * CS * PROTECTED_SHARE
    finally:
        store.close()
