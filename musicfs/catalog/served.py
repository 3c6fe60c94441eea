"""The tree the mount serves, read from the catalog's ``tree`` table.

No object graph of the library lives in memory: lookup, getattr and readdir are indexed
SQLite queries (the primary key, or ``tree_by_parent``) on a read-only connection of the
daemon's own, and SQLite's page cache does the caching. They take microseconds, so they
run on the trio loop itself (a thread hop would cost more than the query; the bench
measures their p99). A sync publishes a new tree as one transaction (``Catalog.
publish_tree``): in WAL mode every query sees one committed tree, the old or the new.

A ``ServedTree`` is the view of one published generation; the rows it reads are always
the latest committed, and a newer view is handed to the FUSE operations on each publish.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import apsw

from musicfs.catalog.db import Catalog
from musicfs.catalog.inodes import ROOT_INODE
from musicfs.catalog.model import Track
from musicfs.catalog.naming import Template
from musicfs.catalog.published_tree import TreeState, read_tree_files, read_tree_state
from musicfs.catalog.track_table import read_track
from musicfs.catalog.tree import DIR_MODE, FILE_MODE, Node, TreeRow, place, tree_rows

_COLUMNS = "ino, parent, name, track_id, size, mtime_ns, subdirs"


def _node(row: tuple[int, int, bytes, int | None, int, int, int]) -> Node:
    ino, parent, name, track_id, size, mtime_ns, subdirs = row
    if track_id is None:
        return Node(ino, parent, name, DIR_MODE, 0, mtime_ns, subdirs=subdirs)
    return Node(ino, parent, name, FILE_MODE, size, mtime_ns, track_id=track_id)


class ServedTree:
    """The FUSE operations' tree: the same interface as an in-memory ``Tree``."""

    def __init__(self, catalog: Catalog, state: TreeState):
        self.catalog = catalog
        self.state = state
        self.generation = state.generation
        self.file_count = state.files
        self.total_bytes = state.total_bytes
        self.node_count = state.nodes
        self.template = state.template
        self._db = catalog.reader()

    # -- the FUSE operations' queries (on the trio loop: indexed, microseconds) ---------

    def get(self, ino: int) -> Node | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM tree WHERE ino = ?", (ino,)).fetchone()
        return None if row is None else _node(row)

    def lookup(self, parent: int, name: bytes) -> Node | None:
        row = self._db.execute(
            f"SELECT {_COLUMNS} FROM tree WHERE parent = ? AND name = ?", (parent, name)
        ).fetchone()
        return None if row is None else _node(row)

    def entries(self, node: Node) -> list[tuple[bytes, Node]]:
        """A folder's children in readdir order, from one query (one committed tree)."""
        if node.children:  # a folder made in memory (the search folder's)
            found = ((name, self.get(node.children[name])) for name in node.listing)
            return [(name, child) for name, child in found if child is not None]
        return [
            (row[2], _node(row))
            for row in self._db.execute(
                f"SELECT {_COLUMNS} FROM tree WHERE parent = ? AND ino != ? ORDER BY name",
                (node.ino, ROOT_INODE),
            )
        ]

    def entry_rows(self, ino: int) -> list[TreeRow]:
        """A folder's children as raw rows, in readdir order (for attributes only)."""
        return list(
            self._db.execute(
                f"SELECT {_COLUMNS} FROM tree WHERE parent = ? AND ino != ? ORDER BY name",
                (ino, ROOT_INODE),
            )
        )

    def track_of(self, node: Node) -> Track | None:
        """The catalog track a file node serves (None: removed since this tree)."""
        if node.track is not None or not node.track_id:
            return node.track
        return read_track(self._db, node.track_id)

    def resolve(self, path: str) -> Node | None:
        """The node at mounted ``path``, its track loaded if it is a file."""
        node = self.get(ROOT_INODE)
        for part in path.strip("/").split("/"):
            if node is None:
                return None
            if part:
                node = self.lookup(node.ino, os.fsencode(part))
        if node is not None and node.track_id:
            node.track = self.track_of(node)
        return node

    def path_of(self, ino: int) -> str:
        parts = []
        node = self.get(ino)
        while node is not None and node.ino != ROOT_INODE:
            parts.append(os.fsdecode(node.name))
            node = self.get(node.parent)
        return "/" + "/".join(reversed(parts))

    # -- whole-tree walks (from worker threads: their own connection) -----------------

    def _snapshot_reader(self) -> apsw.Connection:
        db = apsw.Connection(str(self.catalog.path), flags=apsw.SQLITE_OPEN_READONLY)
        db.set_busy_timeout(1000)
        return db

    def files_with_paths(self) -> Iterator[tuple[str, Node]]:
        """Every file with its mounted path and track, from one read transaction, streamed
        (the folders' paths are held; the tracks come one at a time)."""
        db = self._snapshot_reader()
        try:
            with db:  # one snapshot for the whole walk
                paths = _FolderPaths(db)
                for row, track in read_tree_files(db):
                    node = _node(row)
                    node.track = track
                    yield paths.file_path(node.parent, node.name), node
        finally:
            db.close()

    def changes_since(self, generation: int, catalog_version: int) -> TreeChanges:
        """What changed in the published tree since ``generation``, whose tree was of
        ``catalog_version``: the files that left it, and every file written since or
        whose track was rescanned since, with its mounted path. One read transaction."""
        db = self._snapshot_reader()
        try:
            with db:
                state = read_tree_state(db)
                gone = [
                    r[0]
                    for r in db.execute(
                        "SELECT track_id FROM tree_gone WHERE gen > ?", (generation,)
                    )
                ]
                rows = list(
                    db.execute(
                        f"SELECT {_COLUMNS} FROM tree WHERE track_id IS NOT NULL AND (gen > ? "
                        "OR track_id IN (SELECT id FROM tracks WHERE changed > ?))",
                        (generation, catalog_version),
                    )
                )
                paths = _FolderPaths(db, lazy=True)
                files = []
                for row in rows:
                    track = read_track(db, row[3])
                    if track is not None:
                        node = _node(row)
                        node.track = track
                        files.append((paths.file_path(node.parent, node.name), node))
        finally:
            db.close()
        return TreeChanges(state, gone, files)

    def files(self) -> Iterator[Node]:
        return (node for _, node in self.files_with_paths())


@dataclass
class TreeChanges:
    state: TreeState  # the tree they lead to
    gone: list[int]  # track ids no longer in the tree
    files: list[tuple[str, Node]]  # written or rescanned since: (mounted path, node)


class _FolderPaths:
    """Mounted paths of folders, from one read transaction: every folder read up front
    (a whole-tree walk), or each on first use (a few changed files)."""

    def __init__(self, db: apsw.Connection, *, lazy: bool = False):
        self._db = db
        self._paths: dict[int, str] = {ROOT_INODE: ""}
        self._folders: dict[int, tuple[int, bytes]] = (
            {}
            if lazy
            else {
                ino: (parent, name)
                for ino, parent, name in db.execute(
                    "SELECT ino, parent, name FROM tree WHERE track_id IS NULL"
                )
            }
        )

    def _folder(self, ino: int) -> tuple[int, bytes]:
        known = self._folders.get(ino)
        if known is None:
            row = self._db.execute("SELECT parent, name FROM tree WHERE ino = ?", (ino,)).fetchone()
            assert row is not None, f"folder {ino} missing from the tree"
            known = self._folders[ino] = (row[0], row[1])
        return known

    def folder_path(self, ino: int) -> str:
        known = self._paths.get(ino)
        if known is None:
            parent, name = self._folder(ino)
            known = self._paths[ino] = f"{self.folder_path(parent)}/{os.fsdecode(name)}"
        return known

    def file_path(self, parent: int, name: bytes) -> str:
        return f"{self.folder_path(parent)}/{os.fsdecode(name)}"


def publish_state(catalog: Catalog, template: Template) -> TreeState:
    """Plan the tree of the catalog as it is now and publish it: one transaction that
    writes only the rows that changed. Blocking (a worker thread, or a child process:
    ``publish_process``)."""
    version, tracks = catalog.tracks_for_planning()
    placement = place(tracks, template)
    inos = catalog.inodes(placement.keys())
    rows = tree_rows(placement, {t.id: t for t in tracks}, inos)
    del tracks, placement, inos
    return catalog.publish_tree(rows.values(), template.source, version)


def publish(catalog: Catalog, template: Template) -> ServedTree:
    """``publish_state``, and the view of the published tree."""
    return ServedTree(catalog, publish_state(catalog, template))
