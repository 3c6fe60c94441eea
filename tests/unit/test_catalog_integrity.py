"""Layer 1 (gap 2.4): the catalog's start-up check, moving a broken catalog aside, and
``musicfs fsck``."""

from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from musicfs import failpoints
from musicfs.catalog.db import Catalog
from musicfs.catalog.inodes import file_key
from musicfs.catalog.integrity import check_catalog, open_catalog
from musicfs.catalog.schema import MIGRATIONS, SchemaTooNew
from musicfs.catalog.tags import Tags
from musicfs.cli import main


def filled(path: Path, tracks: int = 400) -> None:
    cat = Catalog(path)
    cat.upsert(
        "local",
        [
            (f"a/{i:04d}.flac", 1000 + i, i, None, Tags(title=f"t{i}" * 20), None)
            for i in range(tracks)
        ],
    )
    cat.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    cat.close()


def scribble(path: Path, offset: int, length: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(bytes((i * 31 + 7) % 256 for i in range(length)))


def test_a_healthy_catalog_opens_in_place(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    filled(path)
    cat, moved = open_catalog(path)
    assert moved is None and cat.track_count() == 400
    cat.close()
    assert check_catalog(path) == []


def pages_of(path: Path, name: str, kind: str) -> list[int]:
    db = apsw.Connection(str(path))
    rows = db.execute(
        "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = ? ORDER BY pageno", (name, kind)
    ).fetchall()
    db.close()
    return [int(r[0]) for r in rows]


def test_corrupt_pages_are_caught_by_quick_check_and_moved_aside(tmp_path: Path, caplog) -> None:
    path = tmp_path / "catalog.sqlite"
    filled(path)
    original = {t.id: t for t in Catalog(path).tracks()}
    leaf = pages_of(path, "tracks", "leaf")[1]
    scribble(path, (leaf - 1) * 4096, 4096)  # one page of track rows destroyed
    assert check_catalog(path)  # fsck sees it as well
    cat, moved = open_catalog(path)
    assert moved is not None and moved.name.startswith("catalog.sqlite.corrupt-")
    assert moved.exists() and moved.read_bytes()[:16] == b"SQLite format 3\0"  # kept as is
    assert cat.check(full=True) == []  # a fresh file, rebuilt by the next sync...
    salvaged = cat.tracks()
    assert 300 < len(salvaged) < 400  # ... holding what the damaged one still gave,
    for t in salvaged:  # every row of it exactly as it was
        o = original[t.id]
        assert (t.path, t.size, t.mtime_ns, t.tags) == (o.path, o.size, o.mtime_ns, o.tags)
    cat.close()
    assert "moved aside" in caplog.text and "rebuilding it from the origins" in caplog.text
    assert "salvaged" in caplog.text


def test_a_file_that_is_not_a_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(b"\xff" * 10000)
    cat, moved = open_catalog(path)
    assert moved is not None and moved.read_bytes() == b"\xff" * 10000
    assert cat.schema_version() == len(MIGRATIONS)
    cat.close()


def test_an_injected_open_failure_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    filled(path, tracks=3)
    failpoints.set("catalog.open", "1*error(EIO)")
    cat, moved = open_catalog(path)
    assert moved is not None
    assert cat.track_count() == 3  # the file itself was fine: everything salvaged
    cat.close()


def test_two_corruptions_in_one_second_keep_both_copies(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    kept = []
    for _ in range(2):
        path.write_bytes(b"garbage" * 1000)
        cat, moved = open_catalog(path)
        cat.close()
        path.unlink()
        kept.append(moved)
    assert kept[0] != kept[1] and all(p is not None and p.exists() for p in kept)


def test_a_newer_schema_is_refused_not_thrown_away(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    Catalog(path, migrations=[*MIGRATIONS, lambda db: None]).close()
    with pytest.raises(SchemaTooNew):
        open_catalog(path)
    assert [p.name for p in tmp_path.iterdir()] == ["catalog.sqlite"] or not list(
        tmp_path.glob("*.corrupt-*")
    )


def test_fsck_reports_and_exits_1_on_problems_without_changing_anything(
    tmp_path: Path, capsys
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / "catalog.sqlite"
    filled(path)
    assert main(["fsck", "--state-dir", str(state)]) == 0
    assert "ok" in capsys.readouterr().out
    scribble(path, 4096 * 3, 4096 * 4)
    before = path.read_bytes()
    assert main(["fsck", "--state-dir", str(state)]) == 1
    assert "catalog" in capsys.readouterr().err
    assert path.read_bytes() == before


def test_fsck_uses_the_full_integrity_check(tmp_path: Path) -> None:
    """An index that disagrees with its table passes quick_check (start-up) but not
    integrity_check (fsck), which compares every index entry with its row."""
    path = tmp_path / "catalog.sqlite"
    filled(path, tracks=50)
    db = apsw.Connection(str(path))
    db.execute("PRAGMA writable_schema=ON")
    # Claim the index covers another column: its stored entries no longer match the rows.
    db.execute(
        "UPDATE sqlite_master SET sql='CREATE INDEX sources_by_origin ON sources(size)' "
        "WHERE name='sources_by_origin'"
    )
    db.execute("PRAGMA writable_schema=OFF")
    db.close()
    assert check_catalog(path, full=False) == []
    problems = check_catalog(path, full=True)
    assert problems and any("sources_by_origin" in p for p in problems), problems


def root_page(path: Path, name: str) -> int:
    db = apsw.Connection(str(path))
    page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    db.close()
    return int(page[0])


def test_rows_on_undamaged_pages_are_salvaged_exactly_and_marked_for_rescan(
    tmp_path: Path,
) -> None:
    path = tmp_path / "catalog.sqlite"
    filled(path, tracks=50)
    before = Catalog(path)
    tracks, inodes = before.tracks(), before.inodes([file_key(t.id) for t in before.tracks()])
    before.add_pin("query", "artist:björk")
    before.add_pin("path", "/Some/Album")
    pins = before.pins()
    before.close()
    # Damage only an index: quick_check fails, every table row is still readable.
    scribble(path, (root_page(path, "sources_by_origin") - 1) * 4096, 4096)
    cat, moved = open_catalog(path)
    assert moved is not None
    salvaged = cat.tracks()
    assert [(t.id, t.path, t.size, t.mtime_ns, t.tags) for t in salvaged] == [
        (t.id, t.path, t.size, t.mtime_ns, t.tags) for t in tracks
    ]
    # Same version keys (the chunk cache serves them), same inode numbers (open files and
    # the kernel's view stay valid), and every source re-scanned by the next sync.
    assert [t.version_key for t in salvaged] == [t.version_key for t in tracks]
    assert cat.inodes(list(inodes)) == inodes
    assert {s.mtime_ns for t in salvaged for s in t.sources} == {-1}
    assert set(cat.known_sources("local").values()) == {(t.size, -1, None) for t in tracks}
    assert cat.pins() == pins  # the pins too: what to keep offline is the user's, not derived
    cat.close()
