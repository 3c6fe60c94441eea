"""Search for the commands that run beside or without a daemon (``musicfs search``, the
pin commands): the tree the daemon would mount, the on-disk index caught up with it when
this process may write it, and an in-memory index when the disk one cannot be read."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import tantivy

from musicfs.catalog.db import Catalog
from musicfs.catalog.inodes import scratch_inodes
from musicfs.catalog.naming import Template
from musicfs.catalog.served import ServedTree
from musicfs.catalog.tree import TreeView, build_tree
from musicfs.search.documents import memory_index
from musicfs.search.index import SearchIndex, SearchUnavailable
from musicfs.search.query import Hit, run_query

log = logging.getLogger(__name__)


def tree_from_catalog(catalog: Catalog, template: str) -> TreeView:
    """The tree the daemon mounts for this catalog, without writing to the catalog: the
    published one if it is current, else one planned in memory."""
    state = catalog.tree_state()
    if (
        state.generation
        and state.template == template
        and state.catalog_version == catalog.catalog_version()
    ):
        return ServedTree(catalog, state)
    return build_tree(catalog.tracks(), Template(template), scratch_inodes)


@contextlib.contextmanager
def _open_catalog(path: Path) -> Iterator[Catalog]:
    catalog = Catalog(path)
    try:
        yield catalog
    finally:
        catalog.close()


def search_library(state_dir: Path, template: str, query: str, limit: int) -> list[Hit]:
    """What ``musicfs search`` does, with or without a running daemon.

    No daemon (the index lock is free): catch the index up with the catalog -- rebuilding
    it if need be -- then search it. A daemon holds the lock and keeps the index current:
    search its committed state, or an in-memory copy if that cannot be read.
    """
    catalog_path = state_dir / "catalog.sqlite"
    if not catalog_path.exists():
        raise FileNotFoundError(
            f"{catalog_path}: no catalog yet; run `musicfs scan` or `musicfs mount` first"
        )
    index = SearchIndex(state_dir / "search", lock_timeout=0.0)
    with _open_catalog(catalog_path) as catalog, index:
        tree: TreeView | None = None
        writer = index.try_acquire()
        for _attempt in range(2 if writer else 1):
            try:
                if writer:
                    tree = tree or tree_from_catalog(catalog, template)
                    index.update(tree)
                return index.search(query, limit)
            except SearchUnavailable as exc:
                log.warning("search index unavailable (%s)", exc)
        log.warning("searching an in-memory index of the catalog instead")
        fallback = memory_index(tree or tree_from_catalog(catalog, template))
        return run_query(fallback, query, limit)


def catalog_searcher(catalog: Catalog, template: str, state_dir: Path) -> Searcher:
    """A search over the catalog's tree for a command running without a daemon (pins):
    the on-disk index caught up with the catalog if this process may write it, else its
    committed state, else an in-memory index built from the tree."""
    tree = tree_from_catalog(catalog, template)
    index = SearchIndex(state_dir / "search", lock_timeout=0.0)
    return Searcher(tree, index)


class Searcher:
    """``tree`` and ``search(query, limit)`` over it; ``close`` releases the index."""

    def __init__(self, tree: TreeView, index: SearchIndex):
        self.tree = tree
        self.index = index
        self._fallback: tantivy.Index | None = None
        if index.try_acquire():
            try:
                index.update(tree)
            except SearchUnavailable as exc:
                log.warning("search index unavailable (%s)", exc)

    def search(self, query: str, limit: int) -> list[Hit]:
        if self._fallback is None:
            try:
                return self.index.search(query, limit)
            except SearchUnavailable as exc:
                log.warning("search index unavailable (%s); searching in memory", exc)
                self._fallback = memory_index(self.tree)
        return run_query(self._fallback, query, limit)

    def close(self) -> None:
        self.index.close()
