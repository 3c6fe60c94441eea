"""Layer 1: every component's ``statistics()`` is a frozen snapshot (musicfs/statistics.py)
that ``musicfs status`` and the metrics read: later counting does not change it, its
fields enumerate as plain numbers, and it serialises to JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import trio

from musicfs.statistics import report
from tests.support.inprocess import opened_daemon, read_through_fuse, settings_for
from tests.support.library import make_library


def test_statistics_are_frozen_snapshots_of_every_counter(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    settings = settings_for(tmp_path, lib)

    async def main() -> None:
        daemon = await opened_daemon(settings)
        assert daemon.reader and daemon.library and daemon.session and daemon.ops
        components = [daemon.reader, daemon.library.pool, daemon.session]
        before = [c.statistics() for c in components]
        ino = next(iter(daemon.ops.tree.files())).ino
        assert isinstance(await read_through_fuse(daemon, ino), bytes)
        after = [c.statistics() for c in components]
        await daemon.shutdown()
        daemon.lock.release()

        reader0, pool0, fuse0 = before
        reader1, pool1, fuse1 = after
        # The old snapshots kept their numbers; the new ones saw the read.
        assert fuse0.counters.reads == 0 and fuse1.counters.reads == 1
        assert fuse0.counters.by_op.get("read", 0) == 0 and fuse1.counters.by_op["read"] == 1
        assert pool0.counters.reads == 0 and pool1.counters.reads >= 1
        assert reader0.counters.origin_fetches == 0 and reader1.counters.origin_fetches >= 1
        assert reader1.store.used_bytes >= 0 and reader1.store.mode.value == "normal"
        for stats in after:
            with pytest.raises(dataclasses.FrozenInstanceError):
                stats.counters = None  # type: ignore[misc]
            json.dumps(report(stats))  # enums as values, nothing opaque

    trio.run(main)


def test_a_store_reports_its_size_once(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=1)

    async def main() -> None:
        daemon = await opened_daemon(settings_for(tmp_path, lib))
        assert daemon.reader is not None
        status = daemon.reader.status()
        await daemon.shutdown()
        daemon.lock.release()
        assert "used_bytes" in status and "size" not in status

    trio.run(main)
