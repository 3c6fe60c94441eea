"""Layer 1: the presence filter lets a cold read skip the store's worker-thread lookup, and
never tells a reader "not stored" for a chunk the store holds -- after puts, restarts and
an index rebuilt from the chunk files."""

from __future__ import annotations

import shutil
from pathlib import Path

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from musicfs.cache.planner import piece_key
from musicfs.cache.presence import MIN_BITS, PresenceFilter
from musicfs.cache.reader import CachingReader
from tests.support.faulty_store import FaultyStore, TrackOrigin

CS = 64 * 1024

versions = st.binary(min_size=16, max_size=16)
chunk_nos = st.one_of(st.integers(0, 10_000), st.integers(0, 10_000).map(piece_key))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(versions, chunk_nos), max_size=300))
def test_every_key_added_is_reported_as_perhaps_present(keys: list[tuple[bytes, int]]) -> None:
    presence = PresenceFilter()
    presence.add_all(keys)
    assert all(presence.may_hold(v, n) for v, n in keys)


def test_keys_never_added_are_mostly_reported_absent() -> None:
    presence = PresenceFilter(expected_keys=MIN_BITS // 8)  # filled to its design load
    for i in range(MIN_BITS // 8):
        presence.add(i.to_bytes(16, "little"), i % 64)
    strangers = [(b"other" + i.to_bytes(11, "little"), i % 64) for i in range(20_000)]
    false_positives = sum(presence.may_hold(v, n) for v, n in strangers)
    assert false_positives < 0.1 * len(strangers)  # ~5% at eight bits a key, two probes


def test_the_filter_grows_with_the_cache_it_serves() -> None:
    assert PresenceFilter(10).size_bytes == MIN_BITS // 8
    assert PresenceFilter(10 * MIN_BITS).size_bytes > MIN_BITS // 8


def new_store(root: Path) -> FaultyStore:
    return FaultyStore(root, chunk_size=CS, max_size=64 * CS, min_free=0)


def test_the_store_knows_what_it_holds_across_restarts_and_index_rebuilds(
    tmp_path: Path,
) -> None:
    version, stranger = b"v" * 16, b"s" * 16
    store = new_store(tmp_path / "cache")
    store.open()
    assert not store.may_hold(version, 0)
    store.put_many([(version, 0, b"a" * CS), (version, piece_key(3), b"b" * (CS // 16))])
    store.put(version, 1, b"c" * CS)
    assert store.may_hold(version, 0) and store.may_hold(version, 1)
    assert store.may_hold(version, piece_key(3))
    store.close()

    for rebuilt in (False, True):
        if rebuilt:  # the index is lost: rebuilt from the chunk files' headers
            shutil.rmtree(tmp_path / "cache" / "index")
        again = new_store(tmp_path / "cache")
        again.open()
        assert again.may_hold(version, 0) and again.may_hold(version, 1)
        assert again.may_hold(version, piece_key(3))
        assert not again.may_hold(stranger, 0)
        again.close()


def test_a_cold_read_skips_the_store_and_a_cached_one_still_finds_it(tmp_path: Path) -> None:
    origin = TrackOrigin(tmp_path / "origin")
    origin.add_many([3 * CS + 100])
    track = origin.tracks["t0.flac"]
    content = origin.content["t0.flac"]
    store = new_store(tmp_path / "cache")

    async def read_twice() -> tuple[CachingReader, CachingReader]:
        cold = CachingReader(store, origin.fetch)  # type: ignore[arg-type]
        await cold.open()
        assert await cold.read(track, 0, CS) == content[:CS]  # a whole chunk: stored
        assert await cold.read(track, CS + 10, 100) == content[CS + 10 : CS + 110]
        await cold.aclose()
        warm = CachingReader(store, origin.fetch)  # type: ignore[arg-type]
        await warm.open()  # a restart: nothing in memory
        assert await warm.read(track, 0, CS) == content[:CS]
        await warm.aclose()
        return cold, warm

    cold, warm = trio.run(read_twice)
    assert cold.counters.known_absent == 2  # neither read waited for a store lookup
    assert cold.counters.store_hits == 0
    assert warm.counters.store_hits == 1 and warm.counters.origin_fetches == 0
    assert store.counters.misses == 0  # the index was never asked for what it lacked
