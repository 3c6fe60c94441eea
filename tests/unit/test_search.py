"""The search index: queries, incremental updates, and rebuilding whatever breaks it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tantivy
import trio

from musicfs import cli
from musicfs.catalog.db import Catalog
from musicfs.catalog.inodes import scratch_inodes
from musicfs.catalog.model import Track
from musicfs.catalog.naming import DEFAULT_TEMPLATE, Template
from musicfs.catalog.tags import Tags
from musicfs.catalog.tree import Tree, build_tree
from musicfs.library.sync import sync_origin
from musicfs.origins.local import LocalOrigin
from musicfs.search import (
    QueryError,
    SearchIndex,
    SearchUnavailable,
    documents,
    marker,
    search_library,
)
from musicfs.search.marker import MARKER
from tests.support.library import make_library

ROOT = Path(__file__).resolve().parents[2]


def track(tid: int, path: str, **tags: object) -> Track:
    return Track(id=tid, path=path, size=1000 + tid, mtime_ns=tid, etag=None, tags=Tags(**tags))  # type: ignore[arg-type]


LIBRARY = [
    track(1, "a/1.flac", title="Snowfall", artist="Aurora Lane", album="Northern Lights",
          year=2019, track=1, genre="Folk"),
    track(2, "a/2.mp3", title="Harbour", artist="Aurora Lane", album="Northern Lights",
          year=2019, track=2, genre="Folk"),
    track(3, "b/1.ogg", title="Fyrsta", artist="Sigur Fjall", album="Ísland", year=2012,
          track=1, genre="Post-Rock"),
    track(4, "c/1.opus", title="Overture", artist="The Copper Kettles", album="Steam & Brass",
          year=2004, track=1, genre="Jazz"),
    track(5, "d/untagged recording.flac"),
]  # fmt: skip


def make_tree(tracks: list[Track]) -> Tree:
    return build_tree(tracks, Template(DEFAULT_TEMPLATE), scratch_inodes)


def paths(index: SearchIndex, query: str) -> list[str]:
    return sorted(hit.path for hit in index.search(query))


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "state" / "search"


@pytest.fixture
def built(index_dir: Path) -> Path:
    """A committed, closed index of LIBRARY."""
    with SearchIndex(index_dir) as index:
        stats = index.update(make_tree(LIBRARY))
    assert (stats.added, stats.total, stats.rebuilt) == (5, 5, "missing")
    return index_dir


def test_queries_find_tracks_by_tags_and_path(built: Path) -> None:
    with SearchIndex(built) as index:
        assert paths(index, "aurora") == [
            "/Aurora Lane/Northern Lights (2019)/01 - Snowfall.flac",
            "/Aurora Lane/Northern Lights (2019)/02 - Harbour.mp3",
        ]
        # Every word must match; case and accents do not matter.
        assert paths(index, "AURORA harbour") == [
            "/Aurora Lane/Northern Lights (2019)/02 - Harbour.mp3"
        ]
        assert paths(index, "island") == ["/Sigur Fjall/Ísland (2012)/01 - Fyrsta.ogg"]
        assert paths(index, "genre:jazz") == [
            "/The Copper Kettles/Steam & Brass (2004)/01 - Overture.opus"
        ]
        assert len(paths(index, "year:[2000 TO 2015]")) == 2
        assert paths(index, "year:2019 snowfall") == [
            "/Aurora Lane/Northern Lights (2019)/01 - Snowfall.flac"
        ]
        # Fallback names are searchable too: the title is the file name, the artist unknown.
        assert paths(index, "untagged") == ["/Unknown Artist/Unknown Album/untagged recording.flac"]
        assert paths(index, "nothing-like-this") == []
        with pytest.raises(QueryError, match="cannot parse"):
            index.search("artist:(")


def test_update_is_incremental_by_track_id(built: Path) -> None:
    renamed = [*LIBRARY[:1], track(2, "a/2.mp3", title="Lighthouse", artist="Aurora Lane",
               album="Northern Lights", year=2019, track=2), *LIBRARY[2:4],
               track(6, "e/new.flac", title="Brand New", artist="Newcomer")]  # fmt: skip
    with SearchIndex(built) as index:
        again = index.update(make_tree(LIBRARY))
        assert (again.added, again.removed, again.rebuilt) == (0, 0, None)
        stats = index.update(make_tree(renamed))
        # Track 2 changed (re-added), track 5 is gone, track 6 is new.
        assert (stats.added, stats.removed, stats.total) == (2, 2, 5)
        assert paths(index, "harbour") == []
        assert paths(index, "lighthouse") == [
            "/Aurora Lane/Northern Lights (2019)/02 - Lighthouse.mp3"
        ]
        assert paths(index, "untagged") == []
        assert paths(index, "newcomer") == ["/Newcomer/Unknown Album/Brand New.flac"]


def test_missing_index_is_built_and_reader_without_index_is_told(index_dir: Path) -> None:
    with SearchIndex(index_dir) as reader, pytest.raises(SearchUnavailable, match="missing"):
        reader.search("aurora")


def test_garbage_meta_json_triggers_rebuild(built: Path) -> None:
    (built / "meta.json").write_text("corrupted {")
    # A reader that may not write reports it rather than touching the files.
    with SearchIndex(built) as reader, pytest.raises(SearchUnavailable, match="unreadable"):
        reader.search("aurora")
    with SearchIndex(built) as index:
        stats = index.update(make_tree(LIBRARY))
        assert stats.rebuilt is not None and "unreadable" in stats.rebuilt
        assert (stats.added, stats.total) == (5, 5)
        assert len(paths(index, "aurora")) == 2
    with SearchIndex(built) as index:
        assert index.update(make_tree(LIBRARY)).rebuilt is None


@pytest.mark.parametrize("ext", ["store", "idx", "term", "pos", "fast", "fieldnorm"])
def test_deleted_segment_files_trigger_rebuild(built: Path, ext: str) -> None:
    victims = [p for p in built.iterdir() if p.suffix == f".{ext}"]
    assert victims, f"no .{ext} segment file in {sorted(os.listdir(built))}"
    for victim in victims:
        victim.unlink()
    with SearchIndex(built) as index:
        stats = index.update(make_tree(LIBRARY))
        assert stats.rebuilt is not None and "unreadable" in stats.rebuilt
        assert len(paths(index, "aurora")) == 2


def test_truncated_segment_file_triggers_rebuild(built: Path) -> None:
    store = next(p for p in built.iterdir() if p.suffix == ".store")
    with store.open("r+b") as f:
        f.truncate(store.stat().st_size // 2)
    with SearchIndex(built) as index:
        assert index.update(make_tree(LIBRARY)).rebuilt is not None
        assert len(paths(index, "aurora")) == 2


def test_older_schema_version_triggers_rebuild(built: Path, monkeypatch) -> None:
    monkeypatch.setattr(marker, "SCHEMA_VERSION", documents.SCHEMA_VERSION + 1)
    with SearchIndex(built) as index:
        stats = index.update(make_tree(LIBRARY))
        assert stats.rebuilt == (
            f"schema version {marker.SCHEMA_VERSION - 1}, this MusicFS writes "
            f"{marker.SCHEMA_VERSION}"
        )
        assert len(paths(index, "aurora")) == 2
    assert json.loads((built / MARKER).read_text()) == {"schema_version": marker.SCHEMA_VERSION}


def test_changed_fields_under_the_same_version_trigger_rebuild(built: Path) -> None:
    """Someone changed the fields but forgot the version bump: tantivy's own schema check
    still catches it."""
    marker = (built / MARKER).read_bytes()
    shutil.rmtree(built)
    built.mkdir()
    sb = tantivy.SchemaBuilder()
    sb.add_unsigned_field("id", stored=True, indexed=True, fast=True)
    sb.add_text_field("title", stored=True)
    tantivy.Index(sb.build(), str(built))
    (built / MARKER).write_bytes(marker)
    with SearchIndex(built) as index:
        stats = index.update(make_tree(LIBRARY))
        assert stats.rebuilt is not None and "schema does not match" in stats.rebuilt
        assert len(paths(index, "aurora")) == 2


def test_interrupted_rebuild_is_redone(built: Path) -> None:
    """The marker is written last: a rebuild cut short before it is not trusted."""
    (built / MARKER).unlink()
    with SearchIndex(built) as index:
        stats = index.update(make_tree(LIBRARY))
        assert stats.rebuilt is not None and "marker" in stats.rebuilt


def test_close_commits_staged_documents(index_dir: Path) -> None:
    """Gap 2.3: shutdown flushes the index."""
    index = SearchIndex(index_dir)
    index.stage(make_tree(LIBRARY))
    index.close()
    with SearchIndex(index_dir) as reader:
        assert len(paths(reader, "aurora")) == 2


CRASHER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from musicfs.search import SearchIndex
    from tests.unit.test_search import LIBRARY, make_tree, track

    index = SearchIndex(Path(sys.argv[1]))
    index.update(make_tree(LIBRARY[:2]))  # committed
    index.update(make_tree([*LIBRARY[:2], track(9, "z.flac", title="Uncommitted")]))
    raise SystemExit("the failpoint should have ended the process")
    """
)


def test_crash_before_commit_keeps_committed_documents(index_dir: Path) -> None:
    """Gap 5.2: a process killed between adding documents and committing them."""
    proc = subprocess.run(
        [sys.executable, "-c", CRASHER, str(index_dir)],
        cwd=ROOT,
        env={**os.environ, "MUSICFS_FAILPOINTS": "search.before_commit=after(1)->exit(9)"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 9, proc.stderr
    with SearchIndex(index_dir) as index:
        assert len(paths(index, "aurora")) == 2
        assert paths(index, "uncommitted") == []
        # The dead writer's locks died with it; the next update catches up incrementally.
        stats = index.update(make_tree(LIBRARY))
        assert (stats.added, stats.rebuilt) == (3, None)
        assert len(paths(index, "island OR uncommitted")) == 1


def test_one_writer_at_a_time(built: Path) -> None:
    with SearchIndex(built) as writer:
        assert writer.try_acquire()
        other = SearchIndex(built, lock_timeout=0.1)
        with pytest.raises(SearchUnavailable, match="another process"):
            other.update(make_tree(LIBRARY))
        # Reading the committed state is fine while someone else writes.
        assert len(paths(other, "aurora")) == 2
        other.close()


def test_update_async_logs_failures_instead_of_raising(built: Path, caplog) -> None:
    with SearchIndex(built) as writer:
        assert writer.try_acquire()
        other = SearchIndex(built, lock_timeout=0.1)
        assert trio.run(other.update_async, make_tree(LIBRARY)) is None
        assert "update failed" in caplog.text
        other.close()


# -- musicfs search ----------------------------------------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=3)
    state = tmp_path / "state"
    catalog = Catalog(state / "catalog.sqlite")
    trio.run(lambda: sync_origin(catalog, LocalOrigin("local", lib)))
    catalog.close()
    return state


def test_search_command_prints_mounted_paths(state: Path, capsys) -> None:
    assert cli.main(["search", "--state-dir", str(state), "song", "1-2"]) == 0
    # No mount point known: relative to the mount, not a path that looks absolute.
    assert capsys.readouterr().out.splitlines() == ["Artist 1/Album 1 (2001)/03 - Song 1-2.opus"]
    assert cli.main(["search", "--state-dir", str(state), "album:0"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert cli.main(["search", "--state-dir", str(state), "no-such-song"]) == 1
    assert capsys.readouterr().out == ""
    assert cli.main(["search", "--state-dir", str(state), "title:("]) == 2
    assert "cannot parse query" in capsys.readouterr().err


def test_search_paths_are_under_the_configured_mount_point(
    state: Path, tmp_path: Path, capsys
) -> None:
    config = tmp_path / "musicfs.toml"
    config.write_text(f'mountpoint = "{tmp_path}/mnt/"\nstate_dir = "{state}"\n')
    assert cli.main(["search", "--config", str(config), "song", "1-2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path}/mnt/Artist 1/Album 1 (2001)/03 - Song 1-2.opus"
    ]


def test_search_into_head_exits_quietly(tmp_path: Path) -> None:
    """`musicfs search ... | head -1`: head closes the pipe after one line, while the
    command still has far more than a pipe buffer to write."""
    state = tmp_path / "state"
    catalog = Catalog(state / "catalog.sqlite")
    rows = [
        (f"a/{i:05d}.flac", 1000 + i, 1, None, Tags(title=f"song {'x' * 60} {i}", artist="A"), None)
        for i in range(3000)
    ]
    catalog.upsert("local", rows)
    catalog.close()
    search = f"{sys.executable} -m musicfs search --state-dir {state} --limit 5000 song"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{search} | head -1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr


def test_search_command_without_catalog_says_so(tmp_path: Path, capsys) -> None:
    assert cli.main(["search", "--state-dir", str(tmp_path), "x"]) == 2
    assert "run `musicfs scan`" in capsys.readouterr().err


def test_search_follows_the_catalog_without_a_daemon(state: Path, tmp_path: Path) -> None:
    hits = search_library(state, DEFAULT_TEMPLATE, "song", 100)
    assert len(hits) == 6
    lib = tmp_path / "lib"
    make_library(lib, albums=3, tracks=3)
    catalog = Catalog(state / "catalog.sqlite")
    trio.run(lambda: sync_origin(catalog, LocalOrigin("local", lib)))
    catalog.close()
    assert len(search_library(state, DEFAULT_TEMPLATE, "song", 100)) == 9


def test_search_of_a_broken_index_held_by_a_daemon_uses_memory(state: Path) -> None:
    """The daemon holds the lock and will repair it; the command must not touch the files
    but still answer."""
    search_library(state, DEFAULT_TEMPLATE, "song", 100)
    (state / "search" / "meta.json").write_text("garbage")
    with SearchIndex(state / "search") as daemon:
        assert daemon.try_acquire()
        hits = search_library(state, DEFAULT_TEMPLATE, "song", 100)
        assert len(hits) == 6
        assert (state / "search" / "meta.json").read_text() == "garbage"
