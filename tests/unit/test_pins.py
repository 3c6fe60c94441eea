"""Layer 1: pins -- accounting against eviction and the cache's capacity, pins restored into
a rebuilt cache index, smart pins re-evaluated after a sync, the fetcher's share of the
bandwidth, and hostile query text."""

from __future__ import annotations

import json
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicfs import failpoints
from musicfs.catalog.model import Track
from musicfs.catalog.tags import Tags
from musicfs.catalog.tree import Tree
from musicfs.config import CacheSettings, Settings
from musicfs.daemon import Daemon
from musicfs.pins.manager import PinManager
from musicfs.pins.selection import (
    Pin,
    PinError,
    PinRefused,
    PinSettings,
    PinSpec,
    plan,
    resolve,
    specs_from_args,
)
from musicfs.search import QueryError, SearchIndex
from tests.support.daemon import scan
from tests.support.inprocess import read_through_fuse, running, settings_for
from tests.support.library import indexed_library, make_padded_library, tagged_file

CS = 64 * 1024
TRACK = 300_000  # about 5 chunks


def small_cache(tmp_path: Path, lib: Path, max_size: int) -> Settings:
    return settings_for(
        tmp_path, lib, cache=CacheSettings(max_size=max_size, min_free=0, chunk_size=CS)
    )


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


def pins_of(daemon: Daemon) -> PinManager:
    assert daemon.pins is not None
    return daemon.pins


async def fetch_all(daemon: Daemon) -> None:
    """Run the daemon's pin fetcher until every pin is complete."""
    manager = pins_of(daemon)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager.run)
        await until(lambda: all(p["complete"] for p in manager.status()["pins"]))
        nursery.cancel_scope.cancel()


def stored_chunks(daemon: Daemon, track: Track) -> list[bool]:
    assert daemon.reader is not None
    store = daemon.reader.store
    return [store.has(track.version_key, n) for n in range((track.size + CS - 1) // CS)]


async def read_everything(daemon: Daemon) -> None:
    assert daemon.ops is not None
    for node in list(daemon.ops.tree.files()):
        for offset in range(0, node.size, CS):
            assert isinstance(await read_through_fuse(daemon, node.ino, CS, offset), bytes)


def test_plan_fills_in_pin_order_counts_shared_tracks_once_and_leaves_out_what_does_not_fit(
    tmp_path: Path,
) -> None:
    def track(i: int, size: int) -> Track:
        return Track(i, f"t{i}.flac", size, 1, None, Tags())

    a, b, c, big = track(1, 100), track(2, 100), track(3, 100), track(4, 1000)
    first, second = Pin(1, PinSpec("query", "x"), 0), Pin(2, PinSpec("query", "y"), 0)
    result = plan([(first, [a, b, big]), (second, [b, c])], capacity=300)
    assert list(result.tracks.values()) == [a, b, c] and result.bytes == 300
    assert result.left_out == {1: 1}
    assert [n for _, n in result.chunks(64)] == [0, 1] * 3


def test_pinned_chunks_outlive_eviction_and_a_too_big_pin_is_refused_with_numbers(
    tmp_path: Path,
) -> None:
    lib = tmp_path / "lib"
    make_padded_library(lib, albums=3, tracks=3, size=TRACK)

    async def main() -> None:
        async with running(small_cache(tmp_path, lib, max_size=1_500_000)) as daemon:
            manager = pins_of(daemon)
            await daemon.search.update_async(daemon.ops.tree)  # type: ignore[union-attr]
            # Everything (9 x 300 kB) cannot fit in 1.5 MB: refused up front, nothing kept.
            with pytest.raises(PinRefused) as refused:
                await manager.add(PinSpec("query", "song"))
            message = str(refused.value)
            assert "needs 2.6 MiB for 9 tracks" in message, message
            assert "cache can hold 1.4 MiB (cache.max_size 1.4 MiB)" in message, message
            assert manager.pins == []
            with pytest.raises(PinError, match="matches no track"):
                await manager.add(PinSpec("query", "nothing-like-this"))

            pinned = await manager.add(PinSpec("query", '"Album 0"'))
            assert pinned["tracks"] == 3 and not pinned["complete"]
            await fetch_all(daemon)
            tracks = list(manager.plan.tracks.values())
            assert len(tracks) == 3
            # Read the whole library through the mount: far more than the cache holds.
            await read_everything(daemon)
            assert daemon.reader is not None
            store = daemon.reader.store
            assert store.counters.evicted > 0
            for track in tracks:
                assert all(stored_chunks(daemon, track)), track.path
            assert store.pinned_bytes == sum(t.size for t in tracks)
            assert store.used <= store.max_size

            # Unpinned: the next eviction may take them.
            await manager.remove(PinSpec("query", '"Album 0"'))
            assert store.pinned_bytes == 0
            await trio.to_thread.run_sync(store.evict, 0)
            assert not any(any(stored_chunks(daemon, t)) for t in tracks)
            with pytest.raises(PinError, match="no pin"):
                await manager.remove(PinSpec("query", '"Album 0"'))

    trio.run(main)


def test_pins_come_back_into_a_rebuilt_cache_index(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_padded_library(lib, albums=2, tracks=2, size=TRACK)
    settings = small_cache(tmp_path, lib, max_size=10_000_000)

    async def first() -> None:
        async with running(settings) as daemon:
            await daemon.search.update_async(daemon.ops.tree)  # type: ignore[union-attr]
            await pins_of(daemon).add(PinSpec("query", '"Album 1"'))
            await fetch_all(daemon)
            await read_everything(daemon)  # unpinned chunks too

    async def second() -> None:
        async with running(settings) as daemon:
            assert daemon.reader is not None
            store = daemon.reader.store
            assert store.pinned_bytes == 0  # the rebuilt index knows nothing of pins...
            manager = pins_of(daemon)
            await manager.evaluate()  # ... until the catalog's pins are applied again
            tracks = list(manager.plan.tracks.values())
            assert len(tracks) == 2 and store.pinned_bytes == sum(t.size for t in tracks)
            await trio.to_thread.run_sync(store.evict, 0)
            for track in tracks:
                assert all(stored_chunks(daemon, track))
            assert all(p["complete"] for p in manager.status()["pins"])

    trio.run(first)
    shutil.rmtree(tmp_path / "cache" / "index")
    trio.run(second)


def test_a_smart_pin_takes_in_what_a_sync_adds(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_padded_library(lib, albums=2, tracks=2, size=TRACK)

    async def main() -> None:
        async with running(small_cache(tmp_path, lib, max_size=10_000_000)) as daemon:
            manager = pins_of(daemon)
            async with trio.open_nursery() as nursery:
                assert daemon.sync_loop is not None
                nursery.start_soon(daemon.sync_loop.run)  # the daemon's own sync -> pins path
                await until(lambda: daemon.search.indexed_generation is not None)
                await manager.add(PinSpec("query", 'artist:"Artist 1"'))
                assert len(manager.plan.tracks) == 2
                nursery.start_soon(manager.run)
                await until(lambda: all(p["complete"] for p in manager.status()["pins"]))
                tagged_file(
                    lib / "later" / "new.flac",
                    "flac",
                    Tags(title="Added Later", artist="Artist 1", album="Later", track=1),
                )
                daemon.resync()
                await until(lambda: len(manager.plan.tracks) == 3)
                await until(lambda: all(p["complete"] for p in manager.status()["pins"]))
                nursery.cancel_scope.cancel()
            added = next(t for t in manager.plan.tracks.values() if t.path == "later/new.flac")
            assert all(stored_chunks(daemon, added))

    trio.run(main)


def _counting(
    warm: Callable[[Track, int], Awaitable[None]], peaks: list[int]
) -> Callable[[Track, int], Awaitable[None]]:
    inflight = 0

    async def counted(track: Track, n: int) -> None:
        nonlocal inflight
        inflight += 1
        peaks.append(inflight)
        try:
            await trio.sleep(0.01)  # long enough for others to start if they may
            await warm(track, n)
        finally:
            inflight -= 1

    return counted


def test_pins_fetch_one_chunk_at_a_time_while_the_mount_serves_reads(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_padded_library(lib, albums=2, tracks=2, size=TRACK)

    async def main() -> None:
        async with running(small_cache(tmp_path, lib, max_size=10_000_000)) as daemon:
            assert daemon.reader is not None and daemon.library is not None
            await daemon.search.update_async(daemon.ops.tree)  # type: ignore[union-attr]
            busy = True
            peaks: list[int] = []
            manager = PinManager(
                daemon.library.catalog,
                daemon.reader.store,
                _counting(daemon.reader.warm, peaks),
                PinSettings(parallel=4),
                tree=lambda: daemon.ops.tree,  # type: ignore[union-attr]
                search=daemon._search_paths,
                busy=lambda: busy,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(manager.run)
                await manager.add(PinSpec("query", '"Album 0"'))
                await until(lambda: all(p["complete"] for p in manager.status()["pins"]))
                assert len(peaks) >= 10 and max(peaks) == 1  # a player is reading: one
                busy, peaks[:] = False, []
                await manager.add(PinSpec("query", '"Album 1"'))
                await until(lambda: all(p["complete"] for p in manager.status()["pins"]))
                assert 1 < max(peaks) <= 4  # idle: up to ``parallel``
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_max_rate_paces_pin_fetching(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_padded_library(lib, albums=1, tracks=2, size=TRACK)
    rate = 1024 * 1024

    async def main() -> None:
        async with running(small_cache(tmp_path, lib, max_size=10_000_000)) as daemon:
            await daemon.search.update_async(daemon.ops.tree)  # type: ignore[union-attr]
            manager = pins_of(daemon)
            manager.settings = PinSettings(parallel=4, max_rate=rate)
            status = await manager.add(PinSpec("query", "song"))
            started = trio.current_time()
            await fetch_all(daemon)
            took = trio.current_time() - started
            # Every chunk but the first waits for its share of the rate.
            assert took >= 0.9 * (status["bytes"] - CS) / rate, took

    trio.run(main)


def test_a_failing_origin_pauses_fetching_and_it_resumes_where_it_stopped(
    tmp_path: Path,
) -> None:
    lib = tmp_path / "lib"
    make_padded_library(lib, albums=1, tracks=2, size=TRACK)

    async def main() -> None:
        async with running(small_cache(tmp_path, lib, max_size=10_000_000)) as daemon:
            await daemon.search.update_async(daemon.ops.tree)  # type: ignore[union-attr]
            manager = pins_of(daemon)
            await manager.add(PinSpec("query", "song"))
            failpoints.set("origin.local.read", "after(3)->error(EIO)")
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(manager.run)
                    await until(lambda: manager.last_error is not None and not manager.fetching)
                    status = manager.status()
                    assert 0 < status["cached_bytes"] < status["bytes"]
                    assert "errno=EIO" in str(status["last_error"])
                    failpoints.set("origin.local.read", "off")
                    await until(lambda: all(p["complete"] for p in manager.status()["pins"]))
                    nursery.cancel_scope.cancel()
            finally:
                failpoints.set("origin.local.read", "off")

    trio.run(main)


# -- hostile text ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Tree, SearchIndex]]:
    with indexed_library(tmp_path_factory.mktemp("pins-hostile")) as found:
        yield found


_WORDS = st.lists(
    st.one_of(
        st.text(min_size=1, max_size=40),
        st.text(alphabet=st.sampled_from(list("ab:()[]{}\"*^~+-! TOAND\\'/.é")), max_size=30),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(words=_WORDS)
def test_hostile_pin_queries_match_tracks_or_fail_cleanly(
    hostile_library: tuple[Tree, SearchIndex], words: list[str]
) -> None:
    tree, index = hostile_library
    try:
        specs = specs_from_args(words, lambda path: None)
    except PinError:
        return  # existing paths outside a mount: refused with a message
    for spec in specs:
        try:
            tracks = resolve(spec, tree, lambda q, n: [h.path for h in index.search(q, n)])
        except QueryError:
            continue
        assert all(t.path for t in tracks)
        assert len({t.id for t in tracks}) == len(tracks)


@given(text=st.text(max_size=200))
def test_path_pins_are_normalised_and_never_climb_out(text: str) -> None:
    try:
        spec = PinSpec.path(text)
    except PinError:
        assert ".." in text.split("/")
        return
    assert spec.text.startswith("/") and "//" not in spec.text
    assert ".." not in spec.text.split("/")


def test_pin_commands_work_on_the_catalog_and_cache_without_a_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from musicfs.cli import main

    lib = tmp_path / "lib"
    make_padded_library(lib, albums=2, tracks=2, size=TRACK)
    scan(lib, tmp_path / "state")
    where = ["--origin", str(lib), "--state-dir", str(tmp_path / "state")]
    where += ["--cache-dir", str(tmp_path / "cache")]
    env_run = tmp_path / "run"  # no daemon's control socket anywhere
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_RUNTIME_DIR", str(env_run))
        assert main(["pin", *where, '"Album 1"']) == 0
        assert 'pinned "Album 1": 2 tracks' in capsys.readouterr().out
        assert main(["pins", "--json", *where]) == 0
        status = json.loads(capsys.readouterr().out)
        assert [p["query"] for p in status["pins"]] == ['"Album 1"']
        assert status["pins"][0]["complete"] and status["cached_bytes"] == 2 * TRACK
        assert main(["pin", "--no-wait", *where, "nothing-matches-this"]) == 1
        assert "matches no track" in capsys.readouterr().err
        assert main(["unpin", *where, '"Album 1"']) == 0
        assert main(["unpin", *where, '"Album 1"']) == 1
        assert "no pin" in capsys.readouterr().err
        assert main(["pins", "--json", *where]) == 0
        assert json.loads(capsys.readouterr().out)["pins"] == []


def test_an_unusable_cache_fetches_nothing_for_pins(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_padded_library(lib, albums=1, tracks=2, size=TRACK)
    (tmp_path / "cache").write_text("not a directory")  # passthrough from the start

    async def main() -> None:
        async with running(small_cache(tmp_path, lib, max_size=10_000_000)) as daemon:
            assert daemon.reader is not None and daemon.library is not None
            await daemon.search.update_async(daemon.ops.tree)  # type: ignore[union-attr]
            peaks: list[int] = []
            manager = PinManager(
                daemon.library.catalog,
                daemon.reader.store,
                _counting(daemon.reader.warm, peaks),
                PinSettings(),
                tree=lambda: daemon.ops.tree,  # type: ignore[union-attr]
                search=daemon._search_paths,
            )
            status = await manager.add(PinSpec("query", "song"))
            assert status["tracks"] == 2  # kept in the catalog all the same
            async with trio.open_nursery() as nursery:
                nursery.start_soon(manager.run)
                await until(lambda: "unusable" in str(manager.last_error))
                await trio.sleep(0.2)
                nursery.cancel_scope.cancel()
            assert peaks == []  # nothing fetched that could not be kept

    trio.run(main)
