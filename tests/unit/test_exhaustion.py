"""Layer 1 (gaps 2.8, 2.9, 5.3): out of descriptors, memory or disk, and a crash half-way
through an update -- each costs one request an EIO (or one sync a retry), never the daemon,
and never a half-applied state."""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import trio

from musicfs import failpoints
from musicfs.catalog.db import Catalog
from musicfs.config import CacheSettings
from musicfs.service.supervisor import Policy
from tests.support.inprocess import opened_daemon, read_through_fuse, running, settings_for
from tests.support.library import make_library


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@contextlib.contextmanager
def no_descriptors_left() -> Iterator[None]:
    """Take every descriptor this process may still open (the next open() gets EMFILE)."""
    # A file object collected meanwhile would free a descriptor: collect now, not during.
    gc.collect()
    gc.disable()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_fds() + 16, hard))
    hog: list[int] = []
    try:
        while True:
            try:
                hog.append(os.open("/dev/null", os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        yield
    finally:
        for fd in hog:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        gc.enable()


def test_emfile_answers_eio_for_that_request_and_leaks_nothing(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    settings = settings_for(tmp_path, lib)

    async def main() -> None:
        async with running(settings) as daemon:
            assert daemon.ops is not None
            cached, uncached = (n.ino for n in daemon.ops.tree.files())
            assert isinstance(await read_through_fuse(daemon, cached), bytes)
            before = open_fds()
            with no_descriptors_left():
                fresh = [await read_through_fuse(daemon, uncached) for _ in range(50)]
                # What is already cached in memory is still served.
                again = await read_through_fuse(daemon, cached)
            assert set(fresh) == {errno.EIO}
            assert isinstance(again, bytes) and again
            # Our shortage, not the origin's nor the cache disk's: nothing marked down.
            assert daemon.mode() == "online"
            # The limit lifted, the same daemon serves again, and no descriptor leaked.
            data = await read_through_fuse(daemon, uncached)
            assert isinstance(data, bytes) and data
            assert open_fds() == before

    trio.run(main)


def test_enomem_answers_eio_and_the_next_read_works(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=1)
    settings = settings_for(tmp_path, lib)

    async def main() -> None:
        async with running(settings) as daemon:
            assert daemon.ops is not None
            ino = next(n.ino for n in daemon.ops.tree.files())
            failpoints.set("origin.local.read", "2*error(ENOMEM)")
            assert await read_through_fuse(daemon, ino) == errno.EIO
            assert await read_through_fuse(daemon, ino) == errno.EIO
            assert isinstance(await read_through_fuse(daemon, ino), bytes)

    trio.run(main)


def test_reads_under_load_leave_no_descriptor_behind(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=5, pad_to=1_000_000)
    contents = {p.relative_to(lib).as_posix(): p.read_bytes() for p in lib.rglob("*.*")}
    # 64 KiB chunks: 300 reads at distinct offsets are 300 fetches, a fifth of them failing.
    settings = settings_for(tmp_path, lib, cache=CacheSettings(chunk_size=64 * 1024))

    async def main() -> None:
        async with running(settings) as daemon:
            assert daemon.ops is not None
            nodes = list(daemon.ops.tree.files())
            await read_through_fuse(daemon, nodes[0].ino)
            before = open_fds()
            failpoints.set("origin.local.read", "60*after(20)->error(EMFILE)")
            results: list[tuple[int, int, bytes | int]] = []

            async def read_at(i: int) -> None:
                node = nodes[i % len(nodes)]
                offset = (i // len(nodes)) * 65536
                got = await read_through_fuse(daemon, node.ino, 65536, offset)
                results.append((i % len(nodes), offset, got))

            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(read_at, i)
            assert daemon.ops.stats.inflight == 0
            failed = [r for r in results if isinstance(r[2], int)]
            assert 0 < len(failed) <= 60 and {r[2] for r in failed} == {errno.EIO}
            for index, offset, got in results:
                if isinstance(got, bytes):
                    track = nodes[index].track
                    assert track is not None
                    assert got == contents[track.path][offset : offset + 65536]
            assert open_fds() == before

    trio.run(main)


def test_a_crash_while_building_a_new_tree_keeps_the_old_one_serving(tmp_path: Path) -> None:
    """Python has no lock poisoning; its equivalent is a half-applied update. The tree is
    an immutable snapshot swapped in whole, so a crash mid-build changes nothing served."""
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=3)
    settings = settings_for(tmp_path, lib)

    async def main() -> None:
        daemon = await opened_daemon(settings)
        assert daemon.ops is not None
        tree = daemon.ops.tree
        make_library(lib / "more", albums=1, tracks=2)  # something new to publish
        failpoints.set("tree.build", "panic")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.supervisor.run)
            assert daemon.sync_loop is not None
            daemon.supervisor.start("sync", daemon.sync_loop.run, Policy.BEST_EFFORT)
            with trio.fail_after(10):
                while daemon.supervisor.status()["sync"]["state"] != "failed":
                    await trio.sleep(0.01)
            assert daemon.ops.tree is tree  # the very same snapshot, untouched
            ino = next(n.ino for n in tree.files())
            assert isinstance(await read_through_fuse(daemon, ino), bytes)
            assert "FailpointPanic" in daemon.supervisor.status()["sync"]["last_error"]
            await daemon.shutdown()
            nursery.cancel_scope.cancel()
        daemon.lock.release()

    trio.run(main)


def test_a_full_state_disk_mid_sync_keeps_committed_batches_and_retries(
    tmp_path: Path, caplog
) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=3, tracks=4)
    settings = settings_for(tmp_path, lib)

    async def main() -> None:
        daemon = await opened_daemon(settings)  # first sync: 12 tracks
        assert daemon.library is not None
        make_library(lib / "new", albums=5, tracks=4)  # 20 more
        daemon.library.settings = daemon.settings = settings  # batches of 200 by default
        from dataclasses import replace

        small = replace(settings, library=replace(settings.library, scan_batch=5))
        daemon.library.settings = small
        failpoints.set("catalog.upsert", "1*after(2)->error(ENOSPC)")
        assert await daemon.library.sync() is False
        assert "catalog write failed" in caplog.text
        assert daemon.library.catalog.track_count() == 12 + 10  # two batches kept
        assert await daemon.library.sync() is True
        assert daemon.library.catalog.track_count() == 32
        await daemon.shutdown()
        daemon.lock.release()

    trio.run(main)
    assert Catalog(settings.catalog_path).track_count() == 32


def test_an_unexpected_error_in_one_read_answers_eio_and_serving_continues(
    tmp_path: Path,
) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    settings = settings_for(tmp_path, lib)

    async def main() -> None:
        async with running(settings) as daemon:
            assert daemon.ops is not None
            first, second = (n.ino for n in daemon.ops.tree.files())
            failpoints.set("origin.local.read", "1*panic")  # a bug, not an I/O error
            assert await read_through_fuse(daemon, first) == errno.EIO
            assert isinstance(await read_through_fuse(daemon, first), bytes)
            assert isinstance(await read_through_fuse(daemon, second), bytes)
            assert daemon.mode() == "online"

    trio.run(main)
