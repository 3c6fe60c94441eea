from dataclasses import replace
from pathlib import Path

import apsw
import pytest

from musicfs.catalog.db import Catalog
from musicfs.catalog.schema import MIGRATIONS, CatalogCorrupt, SchemaTooNew
from musicfs.catalog.tags import Tags


def test_fresh_catalog_is_at_current_schema_in_wal_mode(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    assert cat.schema_version() == len(MIGRATIONS)
    assert cat.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cat.check() == []


def test_migrations_run_in_order_and_only_once(tmp_path: Path) -> None:
    calls = []

    def add_column(db: apsw.Connection) -> None:
        calls.append("v2")
        db.execute("ALTER TABLE tracks ADD COLUMN rating INTEGER")

    Catalog(tmp_path / "c.sqlite").close()
    upgraded = Catalog(tmp_path / "c.sqlite", migrations=[*MIGRATIONS, add_column])
    assert upgraded.schema_version() == len(MIGRATIONS) + 1
    upgraded.db.execute("SELECT rating FROM tracks").fetchall()
    upgraded.close()
    Catalog(tmp_path / "c.sqlite", migrations=[*MIGRATIONS, add_column]).close()
    assert calls == ["v2"]


def test_newer_schema_is_refused_clearly(tmp_path: Path) -> None:
    def future(db: apsw.Connection) -> None:
        pass

    Catalog(tmp_path / "c.sqlite", migrations=[*MIGRATIONS, future]).close()
    with pytest.raises(SchemaTooNew, match="newer than this MusicFS understands"):
        Catalog(tmp_path / "c.sqlite")


def test_garbage_file_is_reported_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogCorrupt):
        Catalog(path)


def test_upsert_sources_and_removal(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    cat.upsert(
        "a",
        [("x.flac", 10, 1, None, Tags(title="X"), None), ("y.flac", 20, 2, None, None, "broken")],
    )
    cat.add_source("b", [("x.flac", 10, 5, "etag")])
    tracks = {t.path: t for t in cat.tracks()}
    assert tracks["x.flac"].tags.title == "X"
    assert {s.origin for s in tracks["x.flac"].sources} == {"a", "b"}
    assert tracks["y.flac"].tag_error == "broken"
    # x is still on b, y was only on a
    assert cat.remove_sources("a", ["x.flac", "y.flac"]) == 1
    assert [t.path for t in cat.tracks()] == ["x.flac"]


def test_inodes_are_stable_across_reopen(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    first = cat.inodes(["d:", "d:A", "f:1"])
    assert first["d:"] == 1
    cat.close()
    cat = Catalog(tmp_path / "c.sqlite")
    assert cat.inodes(["f:1", "d:A", "d:B"]) | first == {**first, "d:B": max(first.values()) + 1}


def test_tracks_for_planning_are_the_tracks_without_sources_sharing_tag_strings(
    tmp_path: Path,
) -> None:
    cat = Catalog(tmp_path / "c.sqlite")
    cat.upsert(
        "o",
        [
            (f"a/{n}.flac", 1, n, None, Tags(title=f"T{n}", artist="Art", album="Alb"), None)
            for n in range(3)
        ],
    )
    version, planned = cat.tracks_for_planning()
    assert version == cat.catalog_version()
    assert planned == [replace(t, sources=()) for t in cat.tracks()]
    assert planned[0].tags.artist is planned[2].tags.artist
    assert planned[0].tags.album is planned[1].tags.album
