"""Full-text search over the library: a tantivy index derived from the catalog.

The index lives in ``state_dir/search`` and is *derived* (principle 2): whenever it is
missing, unreadable, corrupt, written by an older schema or an incompatible tantivy, it is
wiped and rebuilt from the tree -- never reported as fatal. Each document is one track,
keyed by its catalog id, with the fields users search (artist, albumartist, album, title,
genre, year) and the path the track has in the mount.

Updates are incremental: every document carries a digest of its indexed values, and
``update(tree)`` only deletes and re-adds tracks whose digest changed (renames caused by
other tracks -- ``%aunique``, collisions -- change the path and so the digest). A tantivy
commit is atomic: a crash before it keeps the previously committed documents, and the next
update catches up from the tree.

Who may write: the holder of ``state_dir/search.lock`` (the daemon for its lifetime, or the
``musicfs search`` command when no daemon runs). Everyone else only reads committed
segments; a reader that finds the index broken searches an in-memory index built from the
catalog instead of touching the files under a writer's feet.

The package: the index's format (``documents``), its marker file (``marker``), the
on-disk index (``index``), queries (``query``) and search for commands run beside or
without a daemon (``commands``). What callers use is named here.
"""

from musicfs.search.commands import Searcher, catalog_searcher, search_library, tree_from_catalog
from musicfs.search.index import SearchIndex, SearchUnavailable, UpdateStats
from musicfs.search.query import DEFAULT_LIMIT, Hit, QueryError

__all__ = [
    "DEFAULT_LIMIT",
    "Hit",
    "QueryError",
    "SearchIndex",
    "SearchUnavailable",
    "Searcher",
    "UpdateStats",
    "catalog_searcher",
    "search_library",
    "tree_from_catalog",
]
