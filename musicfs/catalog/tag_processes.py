"""Tags of local files parsed in worker processes.

mutagen is pure Python: a scan is CPU-bound and holds the GIL, so threads keep one core
busy however many there are. A fresh scan of a local folder hands groups of files to a
small process pool instead. The parent resolves each path beneath the origin root (the
same check, failpoints and errors as a read) and the worker opens the resolved file and
parses it; only the outcome travels back.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from musicfs.catalog.tags import TagError, Tags, read_tags

# What a worker sends back for one file: ("tags", {field: value}), ("tag_error", why),
# ("open_error", errno, strerror) or ("os_error", errno, strerror) for an I/O error while
# parsing. Plain tuples: an exception with keyword arguments does not survive pickling.
Outcome = tuple[Any, ...]


def _parse(files: Sequence[tuple[str, str]]) -> list[Outcome]:
    """In a worker: (resolved file, catalog path) -> outcome, one after the other."""
    outcomes: list[Outcome] = []
    for real, path in files:
        try:
            f = open(real, "rb")  # noqa: SIM115 -- closed below, its errors told apart
        except OSError as exc:
            outcomes.append(("open_error", exc.errno or errno.EIO, exc.strerror or str(exc)))
            continue
        try:
            with f:
                outcomes.append(("tags", read_tags(f, path).as_dict()))
        except TagError as exc:
            outcomes.append(("tag_error", str(exc)))
        except OSError as exc:
            outcomes.append(("os_error", exc.errno or errno.EIO, exc.strerror or str(exc)))
    return outcomes


def decode(
    outcome: Outcome, open_error: Callable[[int, str], OSError]
) -> tuple[Tags | None, str | None] | OSError:
    """(tags, None), (None, why the tags are unreadable), or the OSError met; a file that
    could not be opened gets ``open_error(errno, strerror)`` (the origin's error for it)."""
    kind = outcome[0]
    if kind == "tags":
        return Tags(**outcome[1]), None
    if kind == "tag_error":
        return None, str(outcome[1])
    if kind == "open_error":
        return open_error(int(outcome[1]), str(outcome[2]))
    return OSError(int(outcome[1]), str(outcome[2]))


def worker_count() -> int:
    return max(1, len(os.sched_getaffinity(0)))


class TagProcesses:
    """A process pool for one scan: started on first use, ended by ``close``."""

    def __init__(self, workers: int | None = None):
        self.workers = workers or worker_count()
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def parse(self, files: Sequence[tuple[str, str]]) -> list[Outcome]:
        """Blocking (call from a worker thread): the outcomes of ``files`` in order."""
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the daemon has threads (trio's, LMDB's) that a fork
                # would copy mid-operation; a fresh interpreter imports only what parsing
                # needs, and ends with the pool.
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=multiprocessing.get_context("spawn")
                )
            pool = self._pool
        return pool.submit(_parse, list(files)).result()

    def close(self) -> None:
        """Blocking: end the workers (a group being parsed is finished first)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
