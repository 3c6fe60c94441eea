import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from musicfs import failpoints
from musicfs.catalog.db import Catalog
from musicfs.catalog.tags import Tags
from musicfs.library.sync import looks_lost, sync_origin
from musicfs.origins.local import LocalOrigin
from tests.support.library import FIXTURES, make_library, tagged_file


def sync(catalog: Catalog, origin, **kw):
    return trio.run(lambda: sync_origin(catalog, origin, **kw))


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog(tmp_path / "state" / "catalog.sqlite")


def test_first_sync_then_incremental(tmp_path: Path, catalog: Catalog) -> None:
    lib = tmp_path / "lib"
    files = make_library(lib, albums=2, tracks=3)
    (lib / "cover.jpg").write_bytes(b"jpeg")
    origin = LocalOrigin("local", lib)
    r = sync(catalog, origin)
    assert (r.listed, r.added_or_changed, r.removed) == (6, 6, 0)
    assert sync(catalog, origin).added_or_changed == 0

    tagged_file(files[0], files[0].suffix[1:], Tags(title="Renamed"))
    os.utime(files[0], ns=(1, 1))
    files[1].unlink()
    r = sync(catalog, origin)
    assert (r.added_or_changed, r.removed) == (1, 1)
    titles = {t.path: t.tags.title for t in catalog.tracks()}
    assert titles[str(files[0].relative_to(lib))] == "Renamed"
    assert len(titles) == 5


def test_broken_and_empty_files_are_listed_with_fallback_and_logged_once(
    tmp_path: Path, catalog: Catalog, caplog
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "broken.mp3").write_bytes(b"not audio at all")
    (lib / "empty.flac").write_bytes(b"")
    origin = LocalOrigin("local", lib)
    r = sync(catalog, origin)
    assert r.tag_errors == 2
    assert {t.path: bool(t.tag_error) for t in catalog.tracks()} == {
        "broken.mp3": True,
        "empty.flac": True,
    }
    caplog.clear()
    sync(catalog, origin)
    assert "unreadable tags" not in caplog.text


def test_failed_listing_deletes_nothing(tmp_path: Path, catalog: Catalog) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    sync(catalog, LocalOrigin("local", lib))
    lib.rename(tmp_path / "moved")
    from musicfs.origins.base import OriginError

    with pytest.raises(OriginError):
        sync(catalog, LocalOrigin("local", lib))
    assert len(catalog.tracks()) == 2


def test_gap_in_listing_keeps_tracks_under_it(
    tmp_path: Path, catalog: Catalog, monkeypatch
) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=2)
    origin = LocalOrigin("local", lib)
    sync(catalog, origin)
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("artist1"):
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    r = sync(catalog, origin)
    assert r.removed == 0 and r.gaps == ("artist1",)
    assert len(catalog.tracks()) == 4


def test_unreadable_file_is_skipped_and_retried(tmp_path: Path, catalog: Catalog) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    failpoints.set("origin.local.read", "1*error(EACCES)")
    r = sync(catalog, LocalOrigin("local", lib), parallel=1)
    assert (r.skipped, r.added_or_changed) == (1, 1)
    r = sync(catalog, LocalOrigin("local", lib))
    assert r.added_or_changed == 1 and len(catalog.tracks()) == 2


def test_crash_after_a_batch_resumes_without_duplicates(tmp_path: Path, catalog: Catalog) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=5, tracks=4)
    origin = LocalOrigin("local", lib)
    failpoints.set("sync.after_batch", "after(2)->panic")
    with pytest.raises(failpoints.FailpointPanic):
        sync(catalog, origin, batch_size=5)
    assert len(catalog.tracks()) == 15
    failpoints.clear()
    r = sync(catalog, origin, batch_size=5)
    assert r.added_or_changed == 5
    assert len(catalog.tracks()) == 20


def test_mirror_origin_adds_sources_without_rescanning(tmp_path: Path, catalog: Catalog) -> None:
    import shutil

    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=3)
    shutil.copytree(lib, tmp_path / "mirror")
    sync(catalog, LocalOrigin("a", lib))
    r = sync(catalog, LocalOrigin("b", tmp_path / "mirror"))
    assert (r.new_sources, r.added_or_changed) == (3, 0)
    assert all({s.origin for s in t.sources} == {"a", "b"} for t in catalog.tracks())


def test_ten_thousand_files_in_one_folder(tmp_path: Path, catalog: Catalog) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    data = (FIXTURES / "tone.opus").read_bytes()
    for i in range(10_000):
        (lib / f"{i:05d}.opus").write_bytes(data)
    r = sync(catalog, LocalOrigin("local", lib), batch_size=1000)
    assert r.added_or_changed == 10_000 and r.tag_errors == 0
    from musicfs.catalog.naming import Template
    from musicfs.catalog.tree import build_tree

    tree = build_tree(catalog.tracks(), Template(), catalog.inodes)
    folder = tree.resolve("/Unknown Artist/Unknown Album")
    assert folder is not None and len(folder.listing) == 10_000


def test_an_origin_that_lists_nothing_removes_nothing_without_prune(
    tmp_path: Path, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    """A local origin on a disk that is not mounted is an empty folder that lists fine:
    taking that for "everything was deleted" would wipe the library."""
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=2)
    origin = LocalOrigin("local", lib)
    sync(catalog, origin)
    for child in list(lib.iterdir()):
        child.rename(tmp_path / child.name)  # the disk goes; its mount point stays
    r = sync(catalog, origin)
    assert (r.listed, r.removed, r.withheld) == (0, 0, 4)
    assert len(catalog.tracks()) == 4
    assert "not removing 4 tracks" in caplog.text and "--prune" in caplog.text
    r = sync(catalog, origin, prune=True)
    assert (r.removed, r.withheld) == (4, 0)
    assert catalog.tracks() == []


def test_an_origin_pointed_elsewhere_is_a_different_origin(
    tmp_path: Path, catalog: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    """Same name (the default "local"), another folder: the old folder's tracks go, even
    all of them at once (which from the same folder would look like an unmounted disk)."""
    first, second = tmp_path / "first", tmp_path / "second"
    make_library(first, albums=2, tracks=3)
    make_library(second / "new", albums=1, tracks=2)
    sync(catalog, LocalOrigin("local", first))
    assert len(catalog.tracks()) == 6
    r = sync(catalog, LocalOrigin("local", second))
    assert r.withheld == 0 and r.removed == 6
    assert sorted(t.path for t in catalog.tracks()) == sorted(
        str(p.relative_to(second)) for p in second.rglob("*") if p.is_file()
    )
    assert f"origin=local is now file://{second} (was file://{first})" in caplog.text
    # Back on the same folder, the unmounted-disk protection holds as before.
    for child in list(second.iterdir()):
        child.rename(tmp_path / f"away-{child.name}")
    r = sync(catalog, LocalOrigin("local", second))
    assert (r.removed, r.withheld) == (0, 2)


def test_what_counts_as_a_lost_disk() -> None:
    assert looks_lost(1, 1) and looks_lost(4, 4)  # everything the origin had
    assert not looks_lost(0, 5)
    assert not looks_lost(1, 6)  # a deleted track
    assert not looks_lost(49, 60)  # small numbers: a user tidying up
    assert not looks_lost(500, 1000)  # half: still believed
    assert looks_lost(600, 1000)  # most of a large library at once: withheld


def test_scan_without_prune_says_so_and_fails_then_prune_removes(tmp_path: Path) -> None:
    lib, state = tmp_path / "lib", tmp_path / "state"
    make_library(lib, albums=1, tracks=2)
    scan = [sys.executable, "-m", "musicfs", "scan", "--origin", str(lib)]
    scan += ["--state-dir", str(state)]
    assert subprocess.run(scan, capture_output=True, timeout=60).returncode == 0
    for child in list(lib.iterdir()):
        child.rename(tmp_path / child.name)
    kept = subprocess.run(scan, capture_output=True, text=True, timeout=60)
    assert kept.returncode == 1
    assert "not removing 2 tracks" in kept.stderr and "2 tracks in the catalog" in kept.stdout
    pruned = subprocess.run([*scan, "--prune"], capture_output=True, text=True, timeout=60)
    assert pruned.returncode == 0 and "0 tracks in the catalog" in pruned.stdout


def _catalogued(catalog: Catalog) -> dict[str, tuple[Tags, str | None]]:
    return {t.path: (t.tags, t.tag_error) for t in catalog.tracks()}


def test_a_large_local_scan_parses_tags_in_worker_processes(tmp_path: Path) -> None:
    """Tags parsed by worker processes are the tags the threads parse, broken files are
    still listed under their names, and an unreadable one is skipped to be retried; the
    parsing CPU time is spent in the children (both cores), not in this process."""
    import resource

    lib = tmp_path / "lib"
    make_library(lib, albums=6, tracks=5)
    (lib / "broken.mp3").write_bytes(b"not audio at all")
    (lib / "empty.flac").write_bytes(b"")
    threads = Catalog(tmp_path / "threads.sqlite")
    sync(threads, LocalOrigin("local", lib), process_scan_min=10**9)

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    processes = Catalog(tmp_path / "processes.sqlite")
    failpoints.set("origin.local.read", "1*error(EACCES)")
    r = sync(processes, LocalOrigin("local", lib), process_scan_min=1, batch_size=7)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert (r.listed, r.added_or_changed, r.skipped) == (32, 31, 1)
    assert after.ru_utime + after.ru_stime > before.ru_utime + before.ru_stime

    failpoints.clear()
    r = sync(processes, LocalOrigin("local", lib), process_scan_min=1)
    assert r.added_or_changed == 1
    assert _catalogued(processes) == _catalogued(threads)


def test_a_file_gone_before_its_worker_opens_it_is_skipped(tmp_path: Path) -> None:
    from musicfs.catalog.tag_processes import TagProcesses, decode
    from musicfs.origins.base import OriginError

    lib = tmp_path / "lib"
    (kept,) = make_library(lib, albums=1, tracks=1)
    processes = TagProcesses(workers=1)
    try:
        outcomes = processes.parse([(str(kept), "a/kept.flac"), (str(lib / "gone"), "a/gone")])
    finally:
        processes.close()

    def open_error(err: int, message: str) -> OSError:
        return OriginError(err, message, origin="local", path="a/gone")

    tags, error = decode(outcomes[0], open_error)  # type: ignore[misc]
    assert tags is not None and tags.title == "Song 0-0" and error is None
    gone = decode(outcomes[1], open_error)
    assert isinstance(gone, OriginError) and gone.errno == errno.ENOENT


def test_tracks_catalogued_without_tags_are_read_again_once(
    tmp_path: Path, catalog: Catalog
) -> None:
    """A catalog from before the tag reader knew RIFF INFO and path names: its untagged
    tracks are read again by the next sync, once, keeping their cache keys."""
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    untagged = lib / "Band" / "Record" / "07 Song.flac"
    untagged.parent.mkdir(parents=True)
    untagged.write_bytes((FIXTURES / "tone.flac").read_bytes())
    origin = LocalOrigin("local", lib)
    sync(catalog, origin)
    # What an older MusicFS left: no names, and no note that it was read again.
    catalog.db.execute("UPDATE tracks SET title = NULL, artist = NULL, album = NULL, track = NULL")
    catalog.db.execute("DELETE FROM sync_state WHERE key LIKE 'reread.%'")
    before = {t.path: t.version_key for t in catalog.tracks()}
    r = sync(catalog, origin)
    assert r.added_or_changed == 3  # every track had lost its names here
    song = next(t for t in catalog.tracks() if t.path == "Band/Record/07 Song.flac")
    assert (song.tags.artist, song.tags.album, song.tags.track, song.tags.title) == (
        "Band",
        "Record",
        7,
        "Song",
    )
    assert {t.path: t.version_key for t in catalog.tracks()} == before
    assert sync(catalog, origin).added_or_changed == 0  # once


def test_a_sync_that_finds_nothing_new_reads_no_other_origins_tracks(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size of every catalogued track is what tells a mirror's new file from a new
    track; a listing with nothing new needs none of them (100,000 paths in memory)."""
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=3)
    origin = LocalOrigin("local", lib)
    sync(catalog, origin)

    def not_needed() -> dict[str, int]:
        raise AssertionError("every track's size was read")

    monkeypatch.setattr(catalog, "track_sizes", not_needed)
    assert sync(catalog, origin).added_or_changed == 0
    monkeypatch.undo()
    mirror = tmp_path / "mirror"
    make_library(mirror, albums=2, tracks=3)
    assert sync(catalog, LocalOrigin("nas", mirror)).new_sources == 6
