"""Layer 1: ``/.search/<query>/`` through the FUSE operations -- found by lookup only,
entries that are the tree's own files, and hostile query names answered ENOENT (one log
line), never an exception past the handler."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator
from pathlib import Path

import pyfuse3
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicfs.catalog.inodes import ROOT_INODE
from musicfs.catalog.tree import Tree
from musicfs.daemon import Daemon
from musicfs.fuse.search_folder import SEARCH_INODE, SearchFolder, entry_name
from tests.support.inprocess import read_through_fuse, running, settings_for
from tests.support.library import indexed_library, make_library


async def _indexed(daemon: Daemon) -> None:
    assert daemon.ops is not None
    assert await daemon.search.update_async(daemon.ops.tree) is not None


async def _lookup(daemon: Daemon, parent: int, name: bytes) -> pyfuse3.EntryAttributes | int:
    assert daemon.ops is not None
    try:
        return await daemon.ops.lookup(parent, name, None)
    except pyfuse3.FUSEError as exc:
        return int(exc.errno)


async def _listing(daemon: Daemon, ino: int) -> list[bytes]:
    assert daemon.ops is not None
    fh = await daemon.ops.opendir(ino, None)
    try:
        return list(daemon.ops._dir_handles[fh].listing)
    finally:
        await daemon.ops.releasedir(fh)


def test_search_folder_lists_matches_as_the_trees_own_files(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=3, tracks=3)

    async def main() -> None:
        async with running(settings_for(tmp_path, lib)) as daemon:
            assert daemon.ops is not None
            await _indexed(daemon)
            # Not in the root's listing: scanners never walk into it.
            assert b".search" not in await _listing(daemon, ROOT_INODE)
            top = await _lookup(daemon, ROOT_INODE, b".search")
            assert isinstance(top, pyfuse3.EntryAttributes) and top.st_ino == SEARCH_INODE
            assert await _listing(daemon, SEARCH_INODE) == []
            folder = await _lookup(daemon, SEARCH_INODE, b"album:2 song")
            assert isinstance(folder, pyfuse3.EntryAttributes)
            names = await _listing(daemon, folder.st_ino)
            tree = daemon.ops.tree
            album = [
                tree.path_of(n.ino) for n in tree.files() if n.track and "2-" in n.track.tags.title
            ]
            assert len(album) == 3
            assert sorted(names) == sorted(
                p.lstrip("/").replace("/", " - ").encode() for p in album
            )
            for name in names:
                entry = await _lookup(daemon, folder.st_ino, name)
                assert isinstance(entry, pyfuse3.EntryAttributes)
                node = tree.get(entry.st_ino)
                assert node is not None
                node.track = tree.track_of(node)
                assert node.track is not None
                assert tree.path_of(node.ino).startswith("/Artist 0/Album 2 (2002)/")
                data = await read_through_fuse(daemon, entry.st_ino, size=1 << 20)
                assert isinstance(data, bytes)
                assert data == (lib / node.track.path).read_bytes()[: 1 << 20]
            # getattr and '..' of a query folder answer too.
            attrs = await daemon.ops.getattr(folder.st_ino, None)
            assert attrs.st_ino == folder.st_ino
            up = await _lookup(daemon, folder.st_ino, b"..")
            assert isinstance(up, pyfuse3.EntryAttributes) and up.st_ino == SEARCH_INODE
            assert await _lookup(daemon, folder.st_ino, b"no such entry") == errno.ENOENT
            # A query nothing matches is an empty folder, not an error.
            empty = await _lookup(daemon, SEARCH_INODE, b"zzzznothing")
            assert isinstance(empty, pyfuse3.EntryAttributes)
            assert await _listing(daemon, empty.st_ino) == []

    trio.run(main)


def test_a_bad_query_is_enoent_and_one_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)

    async def main() -> None:
        async with running(settings_for(tmp_path, lib)) as daemon:
            await _indexed(daemon)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="musicfs.fuse.search_folder"):
                assert await _lookup(daemon, SEARCH_INODE, b"year:[2000 TO") == errno.ENOENT
            lines = [r for r in caplog.records if r.name == "musicfs.fuse.search_folder"]
            assert len(lines) == 1 and "errno=ENOENT" in lines[0].getMessage()
            assert await _lookup(daemon, SEARCH_INODE, b"\xff\xfe") == errno.ENOENT
            # Parsed by tantivy but not runnable: still the query's fault, and the index
            # is not taken for broken (which would rebuild it).
            for runnable_only_in_name in (b"artist:*", b"nosuchfield:*"):
                assert await _lookup(daemon, SEARCH_INODE, runnable_only_in_name) == errno.ENOENT
            assert daemon.search._suspect is None
            assert daemon.ops is not None and daemon.ops.stats.unexpected == 0

    trio.run(main)


def test_entry_names_are_flat_and_fit_255_bytes() -> None:
    assert entry_name("/A/B (2001)/01 - T.flac") == ("A - B (2001) - 01 - T", ".flac")
    stem, ext = entry_name("/" + "/".join(["x" * 200] * 3) + "/t.mp3")
    assert ext == ".mp3" and len(stem) > 255  # cut by sanitize_component, extension kept


# Names the kernel can hand a lookup: any bytes but '/' and NUL, 1..255 of them.
_NAMES = st.one_of(
    st.binary(min_size=1, max_size=255).filter(lambda b: b"/" not in b and b"\0" not in b),
    st.text(
        alphabet=st.sampled_from(list("abc:()[]{}\"*^~+-! TOAND\\'.,?<>=éß")),
        min_size=1,
        max_size=80,
    ).map(lambda s: s.encode()),
)


@pytest.fixture(scope="module")
def hostile_folder(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[SearchFolder, Tree]]:
    with indexed_library(tmp_path_factory.mktemp("hostile")) as (tree, index):
        yield SearchFolder(lambda q, n: [h.path for h in index.search(q, n)]), tree


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(_NAMES, min_size=1, max_size=5))
def test_hostile_query_names_answer_a_folder_or_enoent(
    hostile_folder: tuple[SearchFolder, Tree], names: list[bytes]
) -> None:
    folder, tree = hostile_folder

    async def main() -> None:
        for name in names:
            try:
                node = await folder.lookup(SEARCH_INODE, name, tree)
            except pyfuse3.FUSEError as exc:
                assert exc.errno == errno.ENOENT, (name, exc.errno)
                continue
            assert node is not None and node.is_dir and folder.get(node.ino) is node
            for child in node.listing:
                found = await folder.lookup(node.ino, child, tree)
                assert found is not None and found.track is not None

    trio.run(main)
