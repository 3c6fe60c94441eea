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

import apsw

from musicfs.catalog.db import Catalog, TreeState, read_track, read_tracks
from musicfs.catalog.inodes import ROOT_INODE
from musicfs.catalog.model import Track
from musicfs.catalog.naming import Template
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

    def files_with_paths(self) -> Iterator[tuple[str, Node]]:
        """Every file with its mounted path and track, from one read transaction."""
        db = apsw.Connection(str(self.catalog.path), flags=apsw.SQLITE_OPEN_READONLY)
        db.set_busy_timeout(1000)
        try:
            with db:  # one snapshot for the whole walk
                folders: dict[int, tuple[int, bytes]] = {
                    ino: (parent, name)
                    for ino, parent, name in db.execute(
                        "SELECT ino, parent, name FROM tree WHERE track_id IS NULL"
                    )
                }
                paths: dict[int, str] = {ROOT_INODE: ""}

                def folder_path(ino: int) -> str:
                    known = paths.get(ino)
                    if known is None:
                        parent, name = folders[ino]
                        known = paths[ino] = f"{folder_path(parent)}/{os.fsdecode(name)}"
                    return known

                tracks = {t.id: t for t in read_tracks(db)}
                for row in db.execute(
                    f"SELECT {_COLUMNS} FROM tree WHERE track_id IS NOT NULL ORDER BY ino"
                ):
                    node = _node(row)
                    node.track = tracks.get(row[3])
                    if node.track is not None:
                        yield f"{folder_path(node.parent)}/{os.fsdecode(node.name)}", node
        finally:
            db.close()

    def files(self) -> Iterator[Node]:
        return (node for _, node in self.files_with_paths())


def publish(catalog: Catalog, template: Template) -> ServedTree:
    """Plan the tree of the catalog as it is now and publish it: one transaction that
    writes only the rows that changed. Blocking (a worker thread)."""
    version = catalog.catalog_version()
    tracks = catalog.tracks()
    placement = place(tracks, template)
    inos = catalog.inodes(placement.keys())
    rows = tree_rows(placement, {t.id: t for t in tracks}, inos)
    del tracks, placement, inos
    return ServedTree(catalog, catalog.publish_tree(rows, template.source, version))
