"""Layer 1 (gap 3.8): a FUSE read answers within ``fuse.read_deadline`` whatever the
origin does -- data or EIO, never a hang -- and the next read is served normally."""

from __future__ import annotations

import errno
from pathlib import Path

import trio

from musicfs import failpoints
from tests.support.inprocess import read_through_fuse, running, settings_for
from tests.support.library import make_library


def test_a_hanging_origin_costs_one_read_an_eio_at_the_deadline(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    settings = settings_for(tmp_path, lib, read_deadline=0.5)

    async def main() -> None:
        async with running(settings) as daemon:
            assert daemon.ops is not None
            stuck, fine = (n.ino for n in daemon.ops.tree.files())
            failpoints.set("origin.local.read", "1*sleep(5000)")  # one hung origin call
            started = trio.current_time()
            assert await read_through_fuse(daemon, stuck) == errno.EIO
            took = trio.current_time() - started
            assert 0.3 < took < 2.0, took
            assert isinstance(await read_through_fuse(daemon, fine), bytes)
            assert isinstance(await read_through_fuse(daemon, stuck), bytes)

    trio.run(main)
