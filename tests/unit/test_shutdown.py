"""Layer 1 (gap 2.3): the daemon's ordered shutdown, events recorded in the order they
happen, on real components (catalog, local origin, supervisor, FUSE operations) driven
without a kernel mount. tests/process/test_lifecycle.py runs the same sequence with a real
mount and signals."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import apsw
import pyfuse3
import pytest
import trio

from musicfs import failpoints
from musicfs.catalog.db import Catalog
from musicfs.daemon import Daemon
from musicfs.service.supervisor import Policy
from tests.support.inprocess import opened_daemon, settings_for
from tests.support.library import make_library


async def read(daemon: Daemon, label: str, ino: int) -> None:
    assert daemon.ops is not None
    try:
        # After the unmount even open answers EIO: the tree's connection is closed too.
        info = await daemon.ops.open(ino, os.O_RDONLY, None)
        data = await daemon.ops.read(info.fh, 0, 4096)
        daemon.event(f"read {label}: {len(data)} bytes")
    except pyfuse3.FUSEError as exc:
        daemon.event(f"read {label}: {errno.errorcode[exc.errno]}")


def test_shutdown_runs_in_order_and_drains_reads(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=3)
    settings = settings_for(tmp_path, lib, drain_timeout=1.0, read_deadline=30.0)

    async def main() -> None:
        daemon = await opened_daemon(settings)
        assert daemon.ops is not None
        inodes = [n.ino for n in daemon.ops.tree.files()]

        async def eviction() -> None:
            try:
                await trio.sleep_forever()
            finally:
                daemon.event("eviction cancelled")

        # Read A waits 300 ms in the origin and finishes within the drain window; read B
        # is wedged for 5 s and must be cut off with EIO when the window closes.
        failpoints.set("origin.local.read", "sleep(300)")
        failpoints.set("fuse.read", "after(1)->sleep(5000)")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.supervisor.run)
            daemon.supervisor.start("eviction", eviction, Policy.CRITICAL)
            daemon._start_background()
            nursery.start_soon(read, daemon, "A", inodes[0])
            while failpoints.hits("origin.local.read") == 0:
                await trio.sleep(0.005)
            nursery.start_soon(read, daemon, "B", inodes[1])
            while failpoints.hits("fuse.read") < 2:
                await trio.sleep(0.005)
            started = trio.current_time()
            daemon.request_shutdown()
            await daemon.shutdown()
            took = trio.current_time() - started
            # A read after the drain answers EIO at once, from a closed store or not.
            await read(daemon, "C", inodes[2])
            nursery.cancel_scope.cancel()
        daemon.lock.release()

        assert 0.9 < took < 5, took
        events = daemon.events
        assert events[0] == "opened"
        order = [
            "stopping",
            # Reads are drained while the background work they may wait on still runs.
            "read A: 4096 bytes",
            "read B: EIO",
            "drained",
            "eviction cancelled",
            "background-stopped",
            "stores-closed",
            "unmounted",
            "read C: EIO",
        ]
        assert [e for e in events if e in order] == order
        assert daemon.supervisor.status()["sync"]["state"] in ("cancelled", "done")
        assert daemon.ops.stats.inflight == 0
        # The catalog was closed by the shutdown...
        with pytest.raises(apsw.ConnectionClosedError):
            assert daemon.library is not None
            daemon.library.catalog.track_count()

    trio.run(main)
    # ... and everything committed before it is still there.
    assert Catalog(settings.catalog_path).track_count() == 3


def test_shutdown_without_inflight_reads_is_prompt(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=1)
    settings = settings_for(tmp_path, lib, drain_timeout=5.0)

    async def main() -> None:
        daemon = await opened_daemon(settings)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.supervisor.run)
            daemon._start_background()
            await trio.sleep(0.05)
            started = trio.current_time()
            await daemon.shutdown()
            assert trio.current_time() - started < 1.0
            nursery.cancel_scope.cancel()
        daemon.lock.release()
        assert daemon.state == "stopped"

    trio.run(main)


def test_critical_task_escalation_stops_the_daemon_with_exit_1(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=1)
    settings = settings_for(tmp_path, lib)

    async def main() -> None:
        daemon = await opened_daemon(settings)
        daemon.supervisor.backoff_initial = 0.01
        daemon.supervisor.max_failures = 3

        async def eviction() -> None:
            raise OSError(errno.EIO, "cache disk gone")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.supervisor.run)
            daemon.supervisor.start("eviction", eviction, Policy.CRITICAL)
            with trio.fail_after(5):
                await daemon._shutdown.wait()
            await daemon.shutdown()
            nursery.cancel_scope.cancel()
        daemon.lock.release()
        assert daemon.exit_code == 1
        assert daemon.supervisor.status()["eviction"]["state"] == "failed"

    trio.run(main)
