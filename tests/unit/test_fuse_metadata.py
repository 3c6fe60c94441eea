"""Layer 1: the FUSE metadata operations -- statfs, extended attributes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyfuse3
import pytest
import trio

from musicfs.fuse.operations import BLOCK_SIZE
from tests.support.inprocess import running, settings_for
from tests.support.library import make_library


def test_statfs_reports_the_library_as_used_and_the_cache_disk_free(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=3)
    settings = settings_for(tmp_path, lib)

    async def main() -> None:
        async with running(settings) as daemon:
            assert daemon.ops is not None
            tree = daemon.ops.tree
            data = await daemon.ops.statfs(None)
            library_blocks = -(-sum(n.size for n in tree.files()) // BLOCK_SIZE)
            disk = os.statvfs(settings.cache_dir)
            free = disk.f_bavail * disk.f_frsize // BLOCK_SIZE
            assert tree.file_count == 6
            # `df` must not see a full disk: free is the cache disk's, used the library.
            assert data.f_bavail == data.f_bfree > 0
            assert abs(data.f_bavail - free) <= max(free // 100, 64)
            assert data.f_blocks == library_blocks + data.f_bfree
            assert data.f_ffree == data.f_favail > 0
            assert data.f_files == tree.node_count + data.f_ffree

    trio.run(main)


@pytest.mark.parametrize("op", ["getxattr", "listxattr"])
def test_xattr_requests_answer_enosys_so_the_kernel_stops_sending_them(
    tmp_path: Path, op: str
) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=1)
    settings = settings_for(tmp_path, lib)

    async def main() -> None:
        async with running(settings) as daemon:
            assert daemon.ops is not None
            ino = next(iter(daemon.ops.tree.files())).ino
            with pytest.raises(pyfuse3.FUSEError) as info:
                if op == "getxattr":
                    await daemon.ops.getxattr(ino, b"user.x", None)
                else:
                    await daemon.ops.listxattr(ino, None)
            assert info.value.errno == errno.ENOSYS

    trio.run(main)
