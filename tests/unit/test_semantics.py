"""Layer 1: promises docs/SEMANTICS.md makes to a client of the mount, driven through the
FUSE operations of a daemon opened in this process (real catalog, origin and cache)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pyfuse3
import pytest
import trio

from musicfs.catalog.inodes import ROOT_INODE
from musicfs.daemon import Daemon
from tests.support.inprocess import running, settings_for
from tests.support.library import make_library


async def _errno_of(call: object) -> int:
    try:
        await call  # type: ignore[misc]
    except pyfuse3.FUSEError as exc:
        return int(exc.errno)
    raise AssertionError("the request succeeded")


async def _resync(daemon: Daemon) -> None:
    assert daemon.library is not None and daemon.ops is not None
    await daemon.library.sync()
    daemon.ops.swap_tree(await daemon.library.build_tree())


def test_every_write_type_request_answers_erofs(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=1)

    async def main() -> None:
        async with running(settings_for(tmp_path, lib)) as daemon:
            ops = daemon.ops
            assert ops is not None
            ino = next(iter(ops.tree.files())).ino
            for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_APPEND):
                assert await _errno_of(ops.open(ino, flags, None)) == errno.EROFS
            for name in ("mkdir", "unlink", "rmdir", "rename", "create", "write", "setattr"):
                refused = getattr(ops, name)(ROOT_INODE, b"x", None)
                assert await _errno_of(refused) == errno.EROFS, name

    trio.run(main)


def test_a_file_open_across_a_sync_that_removes_it_keeps_reading(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    made = make_library(lib, albums=1, tracks=2)

    async def main() -> None:
        async with running(settings_for(tmp_path, lib)) as daemon:
            ops = daemon.ops
            assert ops is not None
            node = next(n for n in ops.tree.files() if n.track and n.track.path.endswith("01.flac"))
            expected = (lib / node.track.path).read_bytes()[:4096]  # type: ignore[union-attr]
            info = await ops.open(node.ino, os.O_RDONLY, None)
            try:
                assert bytes(await ops.read(info.fh, 0, 4096)) == expected
                # The cached chunk is what the open handle reads once the file is gone.
                (lib / node.track.path).unlink()  # type: ignore[union-attr]
                await _resync(daemon)
                assert ops.tree.get(node.ino) is None  # gone for new opens...
                assert bytes(await ops.read(info.fh, 0, 4096)) == expected  # ...not for us
                assert (await ops.getattr(node.ino, None)).st_size == node.size
            finally:
                await ops.release(info.fh)
            assert await _errno_of(ops.open(node.ino, os.O_RDONLY, None)) == errno.ENOENT
            assert await _errno_of(ops.getattr(node.ino, None)) == errno.ENOENT
        assert made

    trio.run(main)


def test_a_directory_listing_is_the_snapshot_taken_at_opendir(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=2)  # artist0/album0, artist1/album1

    async def main() -> None:
        async with running(settings_for(tmp_path, lib)) as daemon:
            ops = daemon.ops
            assert ops is not None
            fh = await ops.opendir(ROOT_INODE, None)
            try:
                before = list(ops._dir_handles[fh].listing)
                shutil.rmtree(lib / "artist1")  # one of the two artists goes
                await _resync(daemon)
                root = ops.tree.get(ROOT_INODE)
                assert root is not None and len(ops.tree.entries(root)) == len(before) - 1
                # A listing continued after the new tree still reads the old snapshot, so
                # offsets stay valid: nothing skipped, nothing twice.
                assert list(ops._dir_handles[fh].listing) == before
            finally:
                await ops.releasedir(fh)

    trio.run(main)


@pytest.mark.parametrize("what", ["directory", "missing"])
def test_names_that_are_not_files_answer_their_errno(tmp_path: Path, what: str) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=1)

    async def main() -> None:
        async with running(settings_for(tmp_path, lib)) as daemon:
            ops = daemon.ops
            assert ops is not None
            if what == "directory":
                assert await _errno_of(ops.open(ROOT_INODE, os.O_RDONLY, None)) == errno.EISDIR
                ino = next(iter(ops.tree.files())).ino
                assert await _errno_of(ops.opendir(ino, None)) == errno.ENOTDIR
            else:
                assert await _errno_of(ops.lookup(ROOT_INODE, b"nobody", None)) == errno.ENOENT

    trio.run(main)
