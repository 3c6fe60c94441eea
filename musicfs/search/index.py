"""The on-disk index in ``state_dir/search``: opened (and rebuilt when broken) by its one
writer, brought in line with a published tree incrementally, committed, searched.

All methods block (tantivy, file I/O); call them from worker threads (``update_async``).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import tantivy
import trio

from musicfs.catalog.served import ServedTree
from musicfs.catalog.tree import TreeView
from musicfs.failpoints import fail_point
from musicfs.locks import FileLock
from musicfs.search.documents import (
    WRITER_HEAP,
    committed_digests,
    document,
    documents,
    load,
    make_doc,
    schema,
)
from musicfs.search.marker import IndexMarker, TreeIdentity, tree_identity
from musicfs.search.query import DEFAULT_LIMIT, Hit, QueryError, run_query

log = logging.getLogger(__name__)


class SearchUnavailable(Exception):
    """The on-disk index cannot be used by this process right now (broken, or locked by a
    writer that will repair it)."""


@dataclass
class UpdateStats:
    added: int = 0
    removed: int = 0
    total: int = 0
    seconds: float = 0.0
    rebuilt: str | None = None  # why the index was rebuilt, if it was


class SearchIndex:
    """The on-disk index in ``directory``. Thread-safe; every method blocks."""

    def __init__(self, directory: Path, *, lock_timeout: float = 5.0):
        self.directory = directory
        self.lock_timeout = lock_timeout
        # At most one process writes the index.
        self._lock = FileLock(directory.with_name(directory.name + ".lock"), make_parents=True)
        self.marker = IndexMarker(directory)
        self._mutex = threading.Lock()
        self._limiter = trio.CapacityLimiter(1)
        self._index: tantivy.Index | None = None
        self._writer: tantivy.IndexWriter | None = None
        # Track id -> digest of what the index holds; None: not read (only a walk of the
        # whole tree needs it).
        self._known: dict[int, int] | None = None
        # The published tree the committed index is in line with (the marker's record),
        # and the one the staged changes bring it to.
        self._indexed: TreeIdentity | None = None
        self._staged: TreeIdentity | None = None
        self._pending = False  # staged changes not yet committed
        self._rebuilt: str | None = None
        self._suspect: str | None = None  # why the index must be rebuilt before next use

    # -- opening, validating, rebuilding ---------------------------------------------

    def _open_for_writing(self) -> None:
        problem = self.marker.problem() or self._suspect
        if problem is None:
            try:
                self._index = load(self.directory, create=True)
            except ValueError as exc:  # tantivy reports corruption as ValueError
                problem = f"unreadable ({exc})"
            else:
                self._indexed = self.marker.tree()
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
        self._index = load(self.directory, create=True)
        self._known, self._indexed = {}, None
        # The marker goes last: a crash before it makes the next start rebuild again.
        self.marker.write()
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
            current = tree_identity(tree.state)
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
            writer.add_document(make_doc(*document(path, node)))
        self._pending = self._pending or bool(ids)
        self._known = None  # not kept up to date here; a whole-tree walk reads it again
        self._staged = tree_identity(changes.state)
        return UpdateStats(
            added=len(changes.files), removed=len(changes.gone), total=changes.state.files
        )

    def _delete(self, ids: Iterable[int]) -> None:
        writer = self._writer
        assert writer is not None
        fields = self._index.schema if self._index is not None else schema()
        for tid in ids:
            # (delete_documents_by_term builds a signed term, which never matches a u64.)
            writer.delete_documents_by_query(tantivy.Query.term_query(fields, "id", tid))

    def _stage_all(self, tree: TreeView) -> UpdateStats:
        """Every file of ``tree`` against what the index holds, streamed."""
        writer = self._writer
        assert writer is not None and self._index is not None
        if self._known is None:
            self._commit()  # what is staged counts as held
            self._known = committed_digests(self._index)
        known, now = self._known, {}
        fresh = 0
        for tid, digest, values in documents(tree):
            now[tid] = digest
            held = known.get(tid)
            if held != digest:
                if held is not None:
                    self._delete((tid,))
                writer.add_document(make_doc(tid, digest, values))
                fresh += 1
        stale = [tid for tid in known if tid not in now]
        self._delete(stale)
        replaced = sum(1 for tid in known if tid in now and known[tid] != now[tid])
        self._pending = self._pending or bool(stale or fresh)
        # What the index holds once committed; a rollback or a crash forgets it with the
        # staged documents, and the next open reads the truth back from the index.
        self._known = now
        self._staged = tree_identity(tree.state) if isinstance(tree, ServedTree) else None
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
            self.marker.write(self._staged)
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
                return run_query(self._index, query, limit)
            except QueryError:
                raise
            except ValueError as exc:
                # Damage that opening did not reveal: the next writer rebuilds.
                self._suspect = f"query failed ({exc})"
                raise SearchUnavailable(f"{self.directory}: {exc}") from exc

    def _open_for_reading(self) -> None:
        problem = self.marker.problem()
        if problem is not None:
            raise SearchUnavailable(f"{self.directory}: {problem}")
        try:
            self._index = load(self.directory, create=False)
        except ValueError as exc:
            raise SearchUnavailable(f"{self.directory}: unreadable ({exc})") from exc

    def __enter__(self) -> SearchIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
