"""The ``tree`` table: the tree a sync publishes for the mount to serve, its state in
``meta``, and its files read back with their tracks.

A publish writes only the rows that differ from the served tree, in the caller's lock;
each step is its own transaction (``publish``), so a crash before the last commit leaves
the old tree served.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import apsw

from musicfs.catalog.model import Source, Track
from musicfs.catalog.track_table import TRACK_SELECT, track_of
from musicfs.catalog.tree import TreeRow
from musicfs.failpoints import fail_point

log = logging.getLogger(__name__)

# The published tree: its generation, counts, template and the catalog version it is of.
_TREE_KEYS = (
    "catalog_id",
    "tree_generation",
    "tree_files",
    "tree_bytes",
    "tree_nodes",
    "tree_template",
    "tree_catalog_version",
)


@dataclass(frozen=True)
class TreeState:
    generation: int = 0  # 0: no tree published yet
    files: int = 0
    total_bytes: int = 0
    nodes: int = 0
    template: str = ""
    catalog_version: int = -1
    catalog_id: str = ""


def read_tree_state(db: apsw.Connection) -> TreeState:
    """The published tree's state (``db``: the catalog's, or a reader's connection)."""
    values = dict(
        db.execute(
            f"SELECT key, value FROM meta WHERE key IN ({', '.join('?' * len(_TREE_KEYS))})",
            _TREE_KEYS,
        )
    )
    if "tree_generation" not in values:
        return TreeState(catalog_id=str(values.get("catalog_id", "")))
    return TreeState(
        generation=int(values["tree_generation"]),
        files=int(values["tree_files"]),
        total_bytes=int(values["tree_bytes"]),
        nodes=int(values["tree_nodes"]),
        template=str(values["tree_template"]),
        catalog_version=int(values.get("tree_catalog_version", -1)),
        catalog_id=str(values.get("catalog_id", "")),
    )


def publish(
    db: apsw.Connection, rows: Iterable[TreeRow], template: str, catalog_version: int
) -> TreeState:
    """Make ``rows`` the served tree, writing only what differs from the tree served now.

    The rows go into a temporary table first and the difference is taken by SQLite
    itself: no copy of the served tree in Python, and the diff runs without the GIL."""
    db.execute(
        "CREATE TEMP TABLE IF NOT EXISTS new_tree(ino INTEGER PRIMARY KEY, parent, "
        "name, track_id, size, mtime_ns, subdirs); DELETE FROM temp.new_tree"
    )
    try:
        with db:
            db.executemany("INSERT INTO temp.new_tree VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        with db:
            state = _replace_with_new_tree(db, template, catalog_version)
    finally:
        db.execute("DELETE FROM temp.new_tree")
    return state


def _replace_with_new_tree(db: apsw.Connection, template: str, catalog_version: int) -> TreeState:
    previous = read_tree_state(db)
    generation = previous.generation + 1
    # Files leaving the tree are noted (the search index drops them); a track that
    # comes back is a changed row again.
    db.execute(
        "INSERT OR REPLACE INTO tree_gone(track_id, gen) SELECT track_id, ? FROM tree "
        "WHERE track_id IS NOT NULL AND track_id NOT IN "
        "(SELECT track_id FROM temp.new_tree WHERE track_id IS NOT NULL)",
        (generation,),
    )
    gone = db.changes()
    # A name may move from one inode to another in the same publish (a collision
    # renumbered): every changed row is taken out before the new ones go in.
    db.execute(
        "DELETE FROM tree WHERE ino NOT IN (SELECT ino FROM temp.new_tree) "
        "OR ino IN (SELECT n.ino FROM temp.new_tree n JOIN tree t ON t.ino = n.ino "
        "WHERE (t.parent, t.name, t.track_id, t.size, t.mtime_ns, t.subdirs) IS NOT "
        "(n.parent, n.name, n.track_id, n.size, n.mtime_ns, n.subdirs))"
    )
    db.execute(
        "INSERT INTO tree(ino, parent, name, track_id, size, mtime_ns, subdirs, gen) "
        "SELECT n.*, ? FROM temp.new_tree n WHERE n.ino NOT IN (SELECT ino FROM tree)",
        (generation,),
    )
    written = db.changes()
    db.execute(
        "DELETE FROM tree_gone WHERE track_id IN (SELECT track_id FROM tree WHERE gen = ?)",
        (generation,),
    )
    fail_point("tree.publish")
    row = db.execute(
        "SELECT count(*), count(track_id), coalesce(sum(size), 0) FROM temp.new_tree"
    ).fetchone()
    assert row is not None
    nodes, files, total = (int(v) for v in row)
    state = TreeState(
        generation=generation,
        files=files,
        total_bytes=total,
        nodes=nodes,
        template=template,
        catalog_version=catalog_version,
        catalog_id=previous.catalog_id,
    )
    values = {
        "tree_generation": state.generation,
        "tree_files": state.files,
        "tree_bytes": state.total_bytes,
        "tree_nodes": state.nodes,
        "tree_template": state.template,
        "tree_catalog_version": state.catalog_version,
    }
    db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", list(values.items()))
    log.debug("tree: %d files left, %d rows written", gone, written)
    return state


def read_tree_files(db: apsw.Connection) -> Iterator[tuple[TreeRow, Track]]:
    """Every file of the published tree with its track and sources, in track id order,
    streamed (two cursors merged: nothing of the whole catalog is held at once)."""
    sources = db.cursor().execute(
        "SELECT track_id, origin, size, mtime_ns, etag FROM sources ORDER BY track_id"
    )
    pending = next(sources, None)
    track_columns = ", ".join(f"k.{c}" for c in TRACK_SELECT.split(None, 1)[1].split(", "))
    for row in db.cursor().execute(
        "SELECT t.ino, t.parent, t.name, t.track_id, t.size, t.mtime_ns, t.subdirs, "
        f"{track_columns} FROM tree t JOIN tracks k ON k.id = t.track_id ORDER BY k.id"
    ):
        track_id = row[3]
        found = []
        while pending is not None and pending[0] <= track_id:
            if pending[0] == track_id:
                found.append(Source(*pending[1:]))
            pending = next(sources, None)
        yield row[:7], track_of(row[7:], found)
