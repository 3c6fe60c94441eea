"""Layer 2: ``/.search/<query>/`` through a real kernel mount."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import MountedDaemon, mounted_files
from tests.support.library import make_library

pytestmark = pytest.mark.process


def test_search_folder_through_the_kernel(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=3, tracks=3)
    with MountedDaemon(tmp_path / "mnt", [lib], tmp_path / "state") as d:
        d.wait_for_log("search index: +9 -0, 9 tracks")
        mnt = d.mountpoint
        # Hidden from listings and from a scanner's walk...
        assert ".search" not in os.listdir(mnt)
        found = subprocess.run(
            ["find", str(mnt), "-type", "f"], capture_output=True, text=True, check=True
        )
        assert len(found.stdout.splitlines()) == 9 and ".search" not in found.stdout
        # ... but there for whoever names it.
        assert (mnt / ".search").is_dir()
        folder = mnt / ".search" / "album:1"
        names = sorted(os.listdir(folder))
        tree_files = [p for p in mounted_files(mnt) if p.parent.name.startswith("Album 1 ")]
        assert names == sorted(str(p.relative_to(mnt)).replace("/", " - ") for p in tree_files), (
            names
        )
        for path in tree_files:
            entry = folder / str(path.relative_to(mnt)).replace("/", " - ")
            assert entry.stat().st_ino == path.stat().st_ino
            assert entry.read_bytes() == path.read_bytes()
        # A bad query: ENOENT and one log line, and the mount goes on serving.
        with pytest.raises(FileNotFoundError):
            os.listdir(mnt / ".search" / "year:[2000 TO")
        d.wait_for_log("search folder: cannot parse query")
        assert d.log().count("search folder: cannot parse query") == 1
        assert len(mounted_files(mnt)) == 9
        (only,) = os.listdir(mnt / ".search" / '"song 0-1"')
        assert only.startswith("Artist 0 - Album 0 (2000) - 02 - Song 0-1."), only
