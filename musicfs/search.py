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

All methods block (tantivy, file I/O); call them from worker threads (``update_async``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import tantivy
import trio

from musicfs.catalog.db import Catalog, TreeState
from musicfs.catalog.inodes import scratch_inodes
from musicfs.catalog.naming import Template
from musicfs.catalog.served import ServedTree
from musicfs.catalog.tree import Node, TreeView, build_tree, track_values
from musicfs.failpoints import fail_point
from musicfs.locks import FileLock

log = logging.getLogger(__name__)

# Bump when the fields, their options or the analyzer change: older indexes are rebuilt.
SCHEMA_VERSION = 1
MARKER = "musicfs-search.json"
TEXT_FIELDS = ("artist", "albumartist", "album", "title", "genre", "path")
ANALYZER = "musicfs"
# tantivy wants at least 15 MB per writer thread; one thread is plenty for a library.
WRITER_HEAP = 32_000_000
DEFAULT_LIMIT = 100


class QueryError(ValueError):
    """The query text could not be parsed; the message says where."""


class SearchUnavailable(Exception):
    """The on-disk index cannot be used by this process right now (broken, or locked by a
    writer that will repair it)."""


@dataclass(frozen=True)
class Hit:
    path: str
    score: float


@dataclass
class UpdateStats:
    added: int = 0
    removed: int = 0
    total: int = 0
    seconds: float = 0.0
    rebuilt: str | None = None  # why the index was rebuilt, if it was


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_unsigned_field("id", stored=True, indexed=True, fast=True)
    sb.add_unsigned_field("digest", fast=True)
    for name in TEXT_FIELDS:
        sb.add_text_field(name, stored=name == "path", tokenizer_name=ANALYZER)
    sb.add_integer_field("year", stored=True, indexed=True, fast=True)
    return sb.build()


def _register_analyzer(index: tantivy.Index) -> None:
    # Case- and accent-insensitive: "island" finds "Ísland", "bjork" finds "Björk".
    analyzer = (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(100))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .build()
    )
    index.register_tokenizer(ANALYZER, analyzer)


def _document(path: str, node: Node) -> tuple[int, int, dict[str, str | int]]:
    """(track id, digest, field values) of the file ``node`` at mounted ``path``."""
    track = node.track
    assert track is not None
    shown = track_values(track, multi_disc=False)
    values: dict[str, str | int] = {
        "artist": shown["artist"],
        "albumartist": shown["albumartist"],
        "album": shown["album"],
        "title": shown["title"],
        "genre": shown["genre"],
        "path": path,
    }
    if track.tags.year:
        values["year"] = track.tags.year
    blob = json.dumps(values, sort_keys=True, ensure_ascii=False).encode("utf-8")
    digest = int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big")
    return track.id, digest, values


def _documents(tree: TreeView) -> Iterator[tuple[int, int, dict[str, str | int]]]:
    """(track id, digest, field values) of every file in ``tree``, one at a time."""
    return (_document(path, node) for path, node in tree.files_with_paths())


def _tree_identity(state: TreeState) -> dict[str, str | int] | None:
    """What the marker records of the tree an index holds (None: not a catalog's)."""
    if not state.catalog_id or not state.generation:
        return None
    return {
        "catalog": state.catalog_id,
        "generation": state.generation,
        "catalog_version": state.catalog_version,
    }


def _make_doc(track_id: int, digest: int, values: dict[str, str | int]) -> tantivy.Document:
    doc = tantivy.Document()
    doc.add_unsigned("id", track_id)
    doc.add_unsigned("digest", digest)
    for name, value in values.items():
        if isinstance(value, int):
            doc.add_integer(name, value)
        elif value:
            doc.add_text(name, value)
    return doc


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


class SearchIndex:
    """The on-disk index in ``directory``. Thread-safe; every method blocks."""

    def __init__(self, directory: Path, *, lock_timeout: float = 5.0):
        self.directory = directory
        self.lock_timeout = lock_timeout
        # At most one process writes the index.
        self._lock = FileLock(directory.with_name(directory.name + ".lock"), make_parents=True)
        self._mutex = threading.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self._index: tantivy.Index | None = None
        self._writer: tantivy.IndexWriter | None = None
        # Track id -> digest of what the index holds; None: not read (only a walk of the
        # whole tree needs it).
        self._known: dict[int, int] | None = None
        # The published tree the committed index is in line with (the marker's record),
        # and the one the staged changes bring it to.
        self._indexed: dict[str, str | int] | None = None
        self._staged: dict[str, str | int] | None = None
        self._pending = False  # staged changes not yet committed
        self._rebuilt: str | None = None
        self._suspect: str | None = None  # why the index must be rebuilt before next use

    # -- opening, validating, rebuilding ---------------------------------------------

    def _marker(self) -> dict[str, object] | None:
        try:
            data = json.loads((self.directory / MARKER).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _read_marker(self) -> int | None:
        version = (self._marker() or {}).get("schema_version")
        return version if isinstance(version, int) else None

    def _write_marker(self, tree: dict[str, str | int] | None = None) -> None:
        """The schema version, and the tree the committed index is in line with --
        written after the commit: a crash between them makes the next update redo
        changes the index already has, which is harmless."""
        target = self.directory / MARKER
        tmp = target.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"schema_version": SCHEMA_VERSION, **({"tree": tree} if tree else {})}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _problem(self) -> str | None:
        """Why the on-disk index cannot be used as it is, or None if it can."""
        if not (self.directory / "meta.json").exists():
            return "missing"
        version = self._read_marker()
        if version is None:
            return "no valid schema marker (an interrupted rebuild?)"
        if version != SCHEMA_VERSION:
            return f"schema version {version}, this MusicFS writes {SCHEMA_VERSION}"
        return None

    def _load(self, *, create: bool) -> tantivy.Index:
        """Open the index and read every committed id, touching each segment's files so
        that missing or damaged ones show up now rather than mid-query."""
        exists = (self.directory / "meta.json").exists()
        if exists and not tantivy.Index.is_compatible(str(self.directory)):
            raise ValueError("written by an incompatible tantivy version")
        if create:
            index = tantivy.Index(_schema(), str(self.directory), reuse=True)
        else:
            index = tantivy.Index.open(str(self.directory))
            if index.schema != _schema():
                raise ValueError("index schema differs from this MusicFS's schema")
        _register_analyzer(index)
        index.reload()
        searcher = index.searcher()
        if searcher.num_docs:
            hits = searcher.search(tantivy.Query.all_query(), limit=searcher.num_docs).hits
            addresses = [address for _, address in hits]
            searcher.fast_field_values("id", addresses)
            searcher.fast_field_values("digest", addresses)
            searcher.doc(addresses[0])
            del hits, addresses
        probe = index.parse_query("musicfs", list(TEXT_FIELDS))
        searcher.search(probe, limit=1)
        return index

    @staticmethod
    def _committed_digests(index: tantivy.Index) -> dict[int, int]:
        """Every committed (track id, digest)."""
        index.reload()
        searcher = index.searcher()
        known: dict[int, int] = {}
        if searcher.num_docs:
            hits = searcher.search(tantivy.Query.all_query(), limit=searcher.num_docs).hits
            addresses = [address for _, address in hits]
            ids = searcher.fast_field_values("id", addresses)
            digests = searcher.fast_field_values("digest", addresses)
            for i, d in zip(ids, digests, strict=True):
                if i is not None and d is not None:
                    known[int(i)] = int(d)
        return known

    def _open_for_writing(self) -> None:
        problem = self._problem() or self._suspect
        if problem is None:
            try:
                self._index = self._load(create=True)
            except ValueError as exc:  # tantivy reports corruption as ValueError
                problem = f"unreadable ({exc})"
            else:
                tree = (self._marker() or {}).get("tree")
                self._indexed = tree if isinstance(tree, dict) else None
                self._known = None
        if problem is not None:
            self._rebuild(problem)
        self._suspect = None

    def _rebuild(self, reason: str) -> None:
        """Start again from an empty, committed index; ``update`` fills it from the tree."""
        level = logging.INFO if reason == "missing" else logging.WARNING
        log.log(level, "search index %s: %s; rebuilding from the catalog", self.directory, reason)
        self._writer = None
        self._index = None
        self._pending = False
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._index = self._load(create=True)
        self._known, self._indexed = {}, None
        # The marker goes last: a crash before it makes the next start rebuild again.
        self._write_marker()
        self._rebuilt = reason

    @property
    def indexed_generation(self) -> int | None:
        """The tree generation the committed index is in line with, if this process
        committed or read one."""
        return None if self._indexed is None else int(self._indexed["generation"])

    def try_acquire(self, timeout: float = 0.0) -> bool:
        """Become the index's one writer (until ``close``). False if another process is."""
        return self._lock.try_acquire(timeout)

    def _ensure_writable(self) -> None:
        if self._writer is not None and self._suspect is None:
            return
        if not self._lock.try_acquire(self.lock_timeout):
            raise SearchUnavailable(f"{self._lock.path}: another process is updating the index")
        # (Re)load even if a reader opened it: what was committed before we held the lock
        # is only known now.
        self._writer = None
        self._open_for_writing()
        assert self._index is not None
        self._writer = self._index.writer(heap_size=WRITER_HEAP, num_threads=1)

    # -- writing -----------------------------------------------------------------------

    def update(self, tree: TreeView) -> UpdateStats:
        """Bring the index in line with ``tree`` and commit. A broken index is rebuilt."""
        with self._mutex:
            started = time.monotonic()
            stats = self._stage_checked(tree)
            self._commit()
            stats.seconds = time.monotonic() - started
            return stats

    def stage(self, tree: TreeView) -> UpdateStats:
        """Like ``update`` but without the commit: searchers see the changes only after
        ``commit`` or ``close``, and a crash before then forgets them."""
        with self._mutex:
            return self._stage_checked(tree)

    def _stage_checked(self, tree: TreeView) -> UpdateStats:
        try:
            stats = self._stage(tree)
        except ValueError as exc:
            # Found broken mid-flight (a segment vanished, the writer died): start over.
            # (Rebuilt outside this block: the traceback keeps the old writer alive.)
            self._suspect = f"update failed ({exc})"
        if self._suspect is not None:
            stats = self._stage(tree)
        stats.rebuilt, self._rebuilt = self._rebuilt, None
        return stats

    def _stage(self, tree: TreeView) -> UpdateStats:
        self._ensure_writable()
        if isinstance(tree, ServedTree):
            since = self._indexed
            current = _tree_identity(tree.state)
            if since is not None and current is not None and since["catalog"] == current["catalog"]:
                return self._stage_changes(
                    tree, int(since["generation"]), int(since["catalog_version"])
                )
        return self._stage_all(tree)

    def _stage_changes(
        self, tree: ServedTree, generation: int, catalog_version: int
    ) -> UpdateStats:
        """Only what changed in the published tree since the one the index holds (at
        start-up, after a sync that changed nothing: nothing to read at all)."""
        writer = self._writer
        assert writer is not None
        if tree.generation == generation and tree.state.catalog_version == catalog_version:
            self._staged = self._indexed
            return UpdateStats(total=tree.file_count)
        changes = tree.changes_since(generation, catalog_version)
        ids = set(changes.gone) | {node.track_id for _, node in changes.files}
        self._delete(ids)
        for path, node in changes.files:
            writer.add_document(_make_doc(*_document(path, node)))
        self._pending = self._pending or bool(ids)
        self._known = None  # not kept up to date here; a whole-tree walk reads it again
        self._staged = _tree_identity(changes.state)
        return UpdateStats(
            added=len(changes.files), removed=len(changes.gone), total=changes.state.files
        )

    def _delete(self, ids: Iterable[int]) -> None:
        writer = self._writer
        assert writer is not None
        schema = self._index.schema if self._index is not None else _schema()
        for tid in ids:
            # (delete_documents_by_term builds a signed term, which never matches a u64.)
            writer.delete_documents_by_query(tantivy.Query.term_query(schema, "id", tid))

    def _stage_all(self, tree: TreeView) -> UpdateStats:
        """Every file of ``tree`` against what the index holds, streamed."""
        writer = self._writer
        assert writer is not None and self._index is not None
        if self._known is None:
            self._commit()  # what is staged counts as held
            self._known = self._committed_digests(self._index)
        known, now = self._known, {}
        fresh = 0
        for tid, digest, values in _documents(tree):
            now[tid] = digest
            held = known.get(tid)
            if held != digest:
                if held is not None:
                    self._delete((tid,))
                writer.add_document(_make_doc(tid, digest, values))
                fresh += 1
        stale = [tid for tid in known if tid not in now]
        self._delete(stale)
        replaced = sum(1 for tid in known if tid in now and known[tid] != now[tid])
        self._pending = self._pending or bool(stale or fresh)
        # What the index holds once committed; a rollback or a crash forgets it with the
        # staged documents, and the next open reads the truth back from the index.
        self._known = now
        self._staged = _tree_identity(tree.state) if isinstance(tree, ServedTree) else None
        return UpdateStats(added=fresh, removed=len(stale) + replaced, total=len(now))

    def _commit(self) -> None:
        if self._writer is None:
            return
        if self._pending:
            fail_point("search.before_commit")
            try:
                self._writer.commit()
            except ValueError as exc:
                # The writer is dead (disk error, vanished files): rebuild on the next update.
                self._suspect = f"commit failed ({exc})"
                raise
            self._pending = False
        if self._staged != self._indexed:
            self._write_marker(self._staged)
            self._indexed = self._staged

    def commit(self) -> None:
        """Commit staged changes, if any."""
        with self._mutex:
            self._commit()

    def close(self, timeout: float = 10.0) -> None:
        """Commit, let background merges finish and release the index. An update still
        running after ``timeout`` is left alone: its last commit is the point of truth."""
        if not self._mutex.acquire(timeout=timeout):
            log.warning("search index %s: still updating at shutdown; not waiting", self.directory)
            return
        try:
            if self._writer is not None:
                try:
                    self._commit()
                    self._writer.wait_merging_threads()
                except ValueError as exc:
                    log.warning("search index %s: closing failed (%s)", self.directory, exc)
            self._writer = None
            self._index = None
            self._lock.release()
        finally:
            self._mutex.release()

    async def update_async(self, tree: TreeView) -> UpdateStats | None:
        """``update`` in a worker thread; failures are logged, never raised (the index is
        derived and the mount works without it)."""
        try:
            # Abandoned on cancel: shutdown must not wait on it (close() bounds the wait).
            stats = await trio.to_thread.run_sync(
                self.update, tree, limiter=self._limiter, abandon_on_cancel=True
            )
        except (OSError, ValueError, SearchUnavailable) as exc:
            log.warning("search index %s: update failed (%s); will retry", self.directory, exc)
            return None
        log.info(
            "search index: +%d -%d, %d tracks, %.2fs%s",
            stats.added,
            stats.removed,
            stats.total,
            stats.seconds,
            f" (rebuilt: {stats.rebuilt})" if stats.rebuilt else "",
        )
        return stats

    # -- reading -----------------------------------------------------------------------

    def search(self, query: str, limit: int = DEFAULT_LIMIT) -> list[Hit]:
        """Tracks matching ``query`` (all words must match; ``field:value``, ``year:[a TO b]``
        and quotes work as in tantivy), best first. Raises ``QueryError`` for bad syntax and
        ``SearchUnavailable`` when this process may not repair a broken index."""
        with self._mutex:
            if self._index is None:
                self._open_for_reading()
            assert self._index is not None
            try:
                return _run_query(self._index, query, limit)
            except QueryError:
                raise
            except ValueError as exc:
                # Damage that opening did not reveal: the next writer rebuilds.
                self._suspect = f"query failed ({exc})"
                raise SearchUnavailable(f"{self.directory}: {exc}") from exc

    def _open_for_reading(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise SearchUnavailable(f"{self.directory}: {problem}")
        try:
            self._index = self._load(create=False)
        except ValueError as exc:
            raise SearchUnavailable(f"{self.directory}: unreadable ({exc})") from exc

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run_query(index: tantivy.Index, query: str, limit: int) -> list[Hit]:
    fields = [*TEXT_FIELDS, "year"]
    try:
        parsed = index.parse_query(query, fields, conjunction_by_default=True)
    except ValueError as exc:
        raise QueryError(f"cannot parse query {query!r}: {exc}") from exc
    index.reload()
    searcher = index.searcher()
    try:
        hits = searcher.search(parsed, limit=max(1, limit)).hits
    except ValueError as exc:
        # tantivy parses some queries it cannot run (`x:*` on a field that does not exist
        # or is not a fast field): the query's fault, not a broken index -- which would
        # be rebuilt -- if an empty index with the same schema refuses it too.
        if _refused_by_schema(parsed):
            raise QueryError(f"cannot run query {query!r}: {exc}") from exc
        raise
    result = []
    for score, address in hits:
        path = searcher.doc(address).get_first("path")
        if isinstance(path, str):
            result.append(Hit(path, float(score)))
    # Equal scores come back in segment order; paths make the output stable.
    result.sort(key=lambda hit: (-hit.score, hit.path))
    return result


_EMPTY: list[tantivy.Index] = []


def _refused_by_schema(parsed: tantivy.Query) -> bool:
    if not _EMPTY:
        _EMPTY.append(tantivy.Index(_schema()))
        _register_analyzer(_EMPTY[0])
    try:
        _EMPTY[0].searcher().search(parsed, limit=1)
    except ValueError:
        return True
    return False


def memory_index(tree: TreeView) -> tantivy.Index:
    """A throw-away in-memory index of ``tree``, for readers that find the disk one broken."""
    index = tantivy.Index(_schema())
    _register_analyzer(index)
    writer = index.writer(heap_size=WRITER_HEAP, num_threads=1)
    for tid, digest, values in _documents(tree):
        writer.add_document(_make_doc(tid, digest, values))
    writer.commit()
    writer.wait_merging_threads()
    return index


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
        return _run_query(fallback, query, limit)


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
        return _run_query(self._fallback, query, limit)

    def close(self) -> None:
        self.index.close()
