"""Planning and publishing a tree in a child process.

Planning names every track of the catalog: pure Python over the whole library (at
100,000 tracks about 240 MB and seconds of CPU). In the daemon's process that memory
would stay with it after the publish (CPython's allocator keeps its arenas) and the GIL
would be held while the trio loop answers lookups. A child process does the planning and
writes the new tree in its own transaction -- the same atomic publish as in a thread --
then exits, taking its memory with it; the daemon's worker thread only waits.

spawn, not fork: the daemon has threads (trio's, LMDB's) that a fork would copy
mid-operation.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from musicfs.catalog.db import Catalog
from musicfs.catalog.naming import Template
from musicfs.catalog.published_tree import TreeState
from musicfs.catalog.served import publish_state

# The publisher's CPU priority below the daemon's (nice(2) increment).
PUBLISHER_NICENESS = 10


@dataclass(frozen=True)
class ChildPublish:
    state: TreeState
    peak_rss_kib: int  # the child's peak resident set
    niceness: int  # the child's CPU priority (nice value)


class PublishFailed(OSError):
    """The child process died before it answered (killed, out of memory, a crash): the
    old tree is still the published one."""


def _publish_here(catalog_path: str, template: str) -> ChildPublish:
    """In the child: open the catalog, plan, publish, report."""
    # Background work: the daemon's loop answering lookups on the same cores comes first
    # (1M tracks, 2 shared cores, one run each: lookup p99 during a publish 3.3 ms at nice
    # 0, 1.3 ms at 10).
    niceness = os.nice(PUBLISHER_NICENESS)
    catalog = Catalog(Path(catalog_path))
    try:
        state = publish_state(catalog, Template(template))
    finally:
        catalog.close()
    return ChildPublish(state, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, niceness)


def publish_in_child(catalog: Catalog, template: Template) -> ChildPublish:
    """Blocking (a worker thread): plan and publish ``catalog``'s tree in a fresh child
    process. Errors of the planning (failpoints included) are raised here."""
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        return pool.submit(_publish_here, str(catalog.path), template.source).result()
    except BrokenProcessPool as exc:
        raise PublishFailed(f"{catalog.path}: the tree publisher process died ({exc})") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
