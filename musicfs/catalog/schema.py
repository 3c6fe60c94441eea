"""The catalog's schema: the migrations from each version to the next, applied in order
when a catalog is opened, and the errors opening a catalog can find.

A migration is appended, never edited: a catalog at version N has run exactly the first N.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import apsw

from musicfs.catalog.inodes import ROOT_INODE, ROOT_KEY

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4


class CatalogError(Exception):
    pass


class CatalogCorrupt(CatalogError):
    pass


class SchemaTooNew(CatalogError):
    pass


def _migrate_0_to_1(db: apsw.Connection) -> None:
    db.execute(
        """
        CREATE TABLE tracks(
            id INTEGER PRIMARY KEY,
            path BLOB NOT NULL UNIQUE,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            etag TEXT,
            title TEXT, artist TEXT, albumartist TEXT, album TEXT,
            track INTEGER, disc INTEGER, disctotal INTEGER, year INTEGER, genre TEXT,
            compilation INTEGER NOT NULL DEFAULT 0,
            duration REAL,
            tag_error TEXT,
            scanned_at INTEGER NOT NULL
        );
        CREATE TABLE sources(
            track_id INTEGER NOT NULL REFERENCES tracks(id) ON DELETE CASCADE,
            origin TEXT NOT NULL,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            etag TEXT,
            PRIMARY KEY (track_id, origin)
        );
        CREATE INDEX sources_by_origin ON sources(origin);
        -- Inode numbers handed to the kernel; kept so they survive restarts.
        CREATE TABLE inodes(ino INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE);
        CREATE TABLE sync_state(key TEXT PRIMARY KEY, value TEXT);
        """
    )
    db.execute("INSERT INTO inodes(ino, key) VALUES (?, ?)", (ROOT_INODE, ROOT_KEY))


def _migrate_1_to_2(db: apsw.Connection) -> None:
    # A pin is kept as the query (or mounted path) the user typed, not as a list of
    # tracks: it is re-evaluated after every sync ("smart pin", musicfs/pins/selection.py).
    db.execute(
        """
        CREATE TABLE pins(
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('query', 'path')),
            text TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            UNIQUE (kind, text)
        );
        """
    )


def _migrate_2_to_3(db: apsw.Connection) -> None:
    db.execute(
        """
        -- The tree the mount serves, one row per folder and file; published by a sync in
        -- one transaction (readers see the old rows or the new, never a mix).
        CREATE TABLE tree(
            ino INTEGER PRIMARY KEY,
            parent INTEGER NOT NULL,
            name BLOB NOT NULL,
            track_id INTEGER,  -- NULL for a folder
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            subdirs INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX tree_by_parent ON tree(parent, name);
        """
    )


def _migrate_3_to_4(db: apsw.Connection) -> None:
    # Change stamps, so that what derives from the tree (the search index) reads only what
    # changed since it last looked, never the whole catalog.
    db.execute(
        """
        -- The tree generation that last wrote the row.
        ALTER TABLE tree ADD COLUMN gen INTEGER NOT NULL DEFAULT 0;
        -- The catalog version of the track's last (re)scan.
        ALTER TABLE tracks ADD COLUMN changed INTEGER NOT NULL DEFAULT 0;
        -- Tracks that left the tree, and the generation that took them out.
        CREATE TABLE tree_gone(track_id INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
        -- Names this catalog: a catalog rebuilt from scratch counts generations from 1
        -- again, and what was derived from the old one must not be taken for current.
        INSERT OR REPLACE INTO meta(key, value) VALUES ('catalog_id', lower(hex(randomblob(8))));
        """
    )


# Index i migrates from version i to i + 1. Append, never edit.
MIGRATIONS: list[Callable[[apsw.Connection], None]] = [
    _migrate_0_to_1,
    _migrate_1_to_2,
    _migrate_2_to_3,
    _migrate_3_to_4,
]


def schema_version(db: apsw.Connection) -> int:
    """The version ``db`` is at (0: a new file), creating the ``meta`` table it is kept in."""
    db.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value)")
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(
    db: apsw.Connection, path: Path, migrations: Sequence[Callable[[apsw.Connection], None]]
) -> None:
    """Bring ``db`` (the catalog at ``path``) to the last of ``migrations``, in one
    transaction; a catalog newer than them is refused, never touched."""
    with db:
        version = schema_version(db)
        if version > len(migrations):
            raise SchemaTooNew(
                f"{path}: catalog schema version {version} is newer than this "
                f"MusicFS understands ({len(migrations)}); upgrade MusicFS or move the "
                "catalog aside"
            )
        for target in range(version, len(migrations)):
            log.info("catalog %s: migrating schema %d -> %d", path, target, target + 1)
            migrations[target](db)
        db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
            (len(migrations),),
        )
