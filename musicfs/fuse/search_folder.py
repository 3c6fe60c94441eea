"""The search folder: ``/.search/<query>/`` in the mount lists the tracks matching a query.

It exists by lookup only. ``.search`` is not in the root's listing, so a library scanner
walking the tree never finds it (and never searches, nor reads every track twice); a user
who types the path gets it. Each query folder holds one entry per matching track, best
first, named after the track's place in the tree (``Artist - Album (Year) - 01 - Title.flac``)
-- and each entry *is* the tree's file: the same inode, so it reads the same bytes through
the same cache.

A query that cannot be parsed, or any other failure to search, answers ENOENT and logs
one line; it never reaches the FUSE error guard. Query folders are remembered (at most
``MAX_QUERIES``, least recently used forgotten) with inode numbers from a range the
catalog never hands out, and searched again when a new tree is published.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pyfuse3
import trio

from musicfs.catalog.inodes import ROOT_INODE
from musicfs.catalog.naming import sanitize_component, with_counter
from musicfs.catalog.tree import Node, TreeView
from musicfs.search import QueryError, SearchUnavailable

log = logging.getLogger(__name__)

SEARCH_DIR = b".search"
# Far above anything the catalog's AUTOINCREMENT allocator will reach.
SEARCH_INODE = 1 << 62
MAX_QUERIES = 256
RESULT_LIMIT = 1000
SEARCH_DEADLINE = 2.0  # seconds a lookup may spend searching (the index may be updating)

# query, limit -> mounted paths of the matching tracks, best first (blocking)
SearchPaths = Callable[[str, int], Sequence[str]]


@dataclass
class _Folder:
    node: Node
    generation: int


def entry_name(path: str) -> tuple[str, str]:
    """A flat name for the track at mounted ``path`` as (stem, extension): its components
    joined by `` - ``, cut to fit 255 bytes with the extension kept."""
    parts = [p for p in path.split("/") if p] or ["_"]
    stem, dot, ext = parts[-1].rpartition(".")
    if not dot or not stem:
        stem, ext = parts[-1], ""
    else:
        ext = "." + ext
    return " - ".join([*parts[:-1], stem]), ext


class SearchFolder:
    """The FUSE operations' view of ``/.search``. Not thread-safe: the trio loop only."""

    def __init__(self, search: SearchPaths, *, limit: int = RESULT_LIMIT):
        self.search = search
        self.limit = limit
        self._limiter = trio.CapacityLimiter(2)
        self._folders: OrderedDict[bytes, _Folder] = OrderedDict()
        self._by_ino: dict[int, bytes] = {}
        self._next_ino = itertools.count(SEARCH_INODE + 1)
        self.root = Node(SEARCH_INODE, ROOT_INODE, SEARCH_DIR, stat.S_IFDIR | 0o555, 0, 0)

    def get(self, ino: int) -> Node | None:
        """The search folder's own directories (``.search`` and query folders)."""
        if ino == SEARCH_INODE:
            return self.root
        name = self._by_ino.get(ino)
        return None if name is None else self._folders[name].node

    async def lookup(self, parent: int, name: bytes, tree: TreeView) -> Node | None:
        """The node for ``name`` under ``parent`` if the search folder owns it (None: not
        ours, ask the tree). Raises ENOENT for a query that cannot be answered."""
        if parent == ROOT_INODE and name == SEARCH_DIR:
            return self.root
        if parent == SEARCH_INODE:
            return await self._query_folder(name, tree)
        query = self._by_ino.get(parent)
        if query is None:
            return None
        folder = await self._query_folder(query, tree)
        child = folder.children.get(name)
        node = None if child is None else tree.get(child)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    async def refresh(self, node: Node, tree: TreeView) -> Node:
        """``node`` searched again if a new tree was published since (for opendir)."""
        query = self._by_ino.get(node.ino)
        if query is None:
            return node
        return await self._query_folder(query, tree)

    async def _query_folder(self, name: bytes, tree: TreeView) -> Node:
        folder = self._folders.get(name)
        if folder is not None and folder.generation == tree.generation:
            self._folders.move_to_end(name)
            return folder.node
        try:
            query = name.decode("utf-8")
        except UnicodeDecodeError:
            log.info("search folder: %r is not UTF-8 text, errno=ENOENT", name)
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        paths = await self._search(query)
        ino = folder.node.ino if folder is not None else next(self._next_ino)
        node = Node(ino, SEARCH_INODE, name, stat.S_IFDIR | 0o555, 0, 0)
        for path in paths:
            found = tree.resolve(path)
            if found is None or found.track is None:
                continue  # the index is a sync behind the tree
            stem, ext = entry_name(path)
            entry = os.fsencode(sanitize_component(stem, suffix=ext))
            n = 2
            while entry in node.children:
                entry = os.fsencode(with_counter(stem, ext, n))
                n += 1
            node.children[entry] = found.ino
            node.listing.append(entry)  # best first: a player's folder view shows the ranking
            node.mtime_ns = max(node.mtime_ns, found.mtime_ns)
        self._remember(name, _Folder(node, tree.generation))
        return node

    async def _search(self, query: str) -> Sequence[str]:
        with trio.move_on_after(SEARCH_DEADLINE):
            try:
                return await trio.to_thread.run_sync(
                    self.search, query, self.limit, limiter=self._limiter, abandon_on_cancel=True
                )
            except QueryError as exc:
                log.info("search folder: %s, errno=ENOENT", exc)
            except (SearchUnavailable, OSError, ValueError) as exc:
                log.warning("search folder: query %r: search failed (%s), errno=ENOENT", query, exc)
            raise pyfuse3.FUSEError(errno.ENOENT)
        log.warning(
            "search folder: query %r: no answer within %.0fs (the index is busy), errno=EIO",
            query,
            SEARCH_DEADLINE,
        )
        raise pyfuse3.FUSEError(errno.EIO)

    def _remember(self, name: bytes, folder: _Folder) -> None:
        self._folders[name] = folder
        self._folders.move_to_end(name)
        self._by_ino[folder.node.ino] = name
        while len(self._folders) > MAX_QUERIES:
            _, dropped = self._folders.popitem(last=False)
            self._by_ino.pop(dropped.node.ino, None)
