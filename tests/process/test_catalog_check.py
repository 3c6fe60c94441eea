"""Layer 2: a restart after a clean shutdown mounts without reading the whole catalog
first (``catalog/clean_close.py``) and checks it once the mount answers; damage found
then is repaired at the next start, which checks before mounting again."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import MountedDaemon, mounted_files, scan, unmount_leftovers
from tests.support.library import make_library


@pytest.fixture(autouse=True)
def _no_leftover_mounts(tmp_path: Path) -> Iterator[None]:
    yield
    unmount_leftovers(tmp_path)


def test_a_clean_restart_checks_the_catalog_after_the_mount(tmp_path: Path) -> None:
    lib, state = tmp_path / "lib", tmp_path / "state"
    make_library(lib, albums=3, tracks=4)
    scan(lib, state)
    stamp = state / "catalog.sqlite.clean"
    with MountedDaemon(tmp_path / "first", [lib], state) as d:
        d.wait_for_log("search index:")
        assert "checked after the mount" not in d.log()  # a scan wrote it: checked first
    assert stamp.exists()
    with MountedDaemon(tmp_path / "second", [lib], state) as d:
        assert not stamp.exists()  # a crash from here on means a check before mounting
        d.wait_for_log("checked after the mount")
        assert len(mounted_files(d.mountpoint)) == 12
    assert stamp.exists()


def test_damage_found_after_the_mount_is_repaired_at_the_next_start(tmp_path: Path) -> None:
    lib, state = tmp_path / "lib", tmp_path / "state"
    make_library(lib, albums=3, tracks=4)
    scan(lib, state)
    catalog = state / "catalog.sqlite"
    with MountedDaemon(tmp_path / "first", [lib], state) as d:
        d.wait_for_log("search index:")
    # Bit rot: pages garbled in place, the file's size and mtime as they were.
    st = catalog.stat()
    with catalog.open("r+b") as f:
        f.seek(2 * 4096)
        f.write(bytes((i * 37 + 11) % 256 for i in range(2 * 4096)))
    os.utime(catalog, ns=(st.st_atime_ns, st.st_mtime_ns))
    with MountedDaemon(tmp_path / "second", [lib], state) as d:
        d.wait_for_log("quick_check after the mount")
        assert "moved aside and rebuilt at the next start" in d.log()
    assert not (state / "catalog.sqlite.clean").exists()
    with MountedDaemon(tmp_path / "third", [lib], state) as d:
        d.wait_for_log("tree: generation")
        assert "is unusable" in d.log()
        assert len(mounted_files(d.mountpoint)) == 12
    assert list(state.glob("catalog.sqlite.corrupt-*"))
