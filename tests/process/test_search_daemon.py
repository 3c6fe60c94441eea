"""Layer 2: the daemon keeps the search index current, flushes it at shutdown (gap 2.3) and
rebuilds a corrupt one at start-up (gap 2.4); ``musicfs search`` works beside it."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from musicfs.catalog.db import Catalog
from musicfs.catalog.naming import DEFAULT_TEMPLATE
from musicfs.search import SearchIndex, tree_from_catalog
from tests.support.daemon import MountedDaemon, musicfs_cmd, scan
from tests.support.library import make_library


def search_cmd(state: Path, *query: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        musicfs_cmd("search", "--state-dir", str(state), *query),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_daemon_indexes_flushes_at_shutdown_and_search_works_beside_it(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=3, tracks=4)
    state = tmp_path / "state"
    d = MountedDaemon(tmp_path / "mnt", [lib], state).start()
    try:
        d.wait_for_log("search index: +12 -0, 12 tracks")
        # The daemon holds the index: the command reads its committed state.
        found = search_cmd(state, "song", "2-3")
        assert found.returncode == 0, found.stderr
        assert found.stdout.splitlines() == ["Artist 0/Album 2 (2002)/04 - Song 2-3.wav"]
        # ... and opens what the mount serves.
        assert (d.mountpoint / found.stdout.strip()).stat().st_size > 0
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=20) == 0
    finally:
        d.stop()
    # Closed cleanly: the next writer trusts it as it is (no rebuild) and has nothing to add.
    catalog = Catalog(state / "catalog.sqlite")
    try:
        with SearchIndex(state / "search") as index:
            stats = index.update(tree_from_catalog(catalog, DEFAULT_TEMPLATE))
            assert (stats.added, stats.removed, stats.total, stats.rebuilt) == (0, 0, 12, None)
            assert len(index.search("song", limit=100)) == 12
    finally:
        catalog.close()


def test_daemon_rebuilds_a_corrupt_index_at_start(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=3)
    state = tmp_path / "state"
    assert search_cmd(state, "song").returncode == 2  # no catalog yet: says so
    scan(lib, state)
    assert search_cmd(state, "song").returncode == 0  # builds the index without a daemon
    (state / "search" / "meta.json").write_text("corrupted")
    with MountedDaemon(tmp_path / "mnt", [lib], state) as d:
        d.wait_for_log("search index: +6 -0, 6 tracks")
        assert "unreadable" in d.log() and "rebuilding from the catalog" in d.log()
        found = search_cmd(state, "album:1")
        assert found.returncode == 0, found.stderr
        assert len(found.stdout.splitlines()) == 3


def test_search_beside_a_daemon_is_answered_by_it(tmp_path: Path) -> None:
    """The daemon answers from its open index over the control socket: the command loads
    no index, catalog or trio (it starts in milliseconds); a bad query is still exit 2
    with tantivy's message; a daemon that is gone leaves the command to read the index."""
    lib = tmp_path / "lib"
    make_library(lib, albums=3, tracks=4)
    state = tmp_path / "state"
    probe = (
        "import sys\nfrom musicfs.cli import main\n"
        f"code = main(['search', '--state-dir', {str(state)!r}, *sys.argv[1:]])\n"
        "heavy = [m for m in ('tantivy', 'apsw', 'trio') if m in sys.modules]\n"
        "print('loaded:', ','.join(heavy), file=sys.stderr)\nsys.exit(code)\n"
    )

    def search_probe(*query: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", probe, *query], capture_output=True, text=True, timeout=60
        )

    with MountedDaemon(tmp_path / "mnt", [lib], state) as d:
        d.wait_for_log("search index: +12 -0, 12 tracks")
        found = search_probe("song", "2-3")
        assert found.returncode == 0, found.stderr
        assert found.stdout.splitlines() == ["Artist 0/Album 2 (2002)/04 - Song 2-3.wav"]
        assert "loaded: \n" in found.stderr  # answered by the daemon
        bad = search_probe("artist:(")
        assert bad.returncode == 2 and "cannot parse" in bad.stderr, bad.stderr
        nothing = search_probe("nothing-like-this")
        assert nothing.returncode == 1 and nothing.stdout == ""
    found = search_probe("song", "2-3")  # the daemon is gone: the command reads the index
    assert found.returncode == 0, found.stderr
    assert found.stdout.splitlines() == ["Artist 0/Album 2 (2002)/04 - Song 2-3.wav"]
    assert "tantivy" in found.stderr
