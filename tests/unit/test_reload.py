"""Layer 1: what a config reload (SIGHUP) applies while mounted and what waits for a
restart; and the daemon applying it to its running components."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import trio

from musicfs.config import settings_from_dict
from musicfs.service.reload import plan_reload
from tests.support.inprocess import opened_daemon, settings_for
from tests.support.library import make_library


def settings(**raw: object):  # type: ignore[no-untyped-def]
    base = {"mountpoint": "/mnt/music", "state_dir": "/var/lib/musicfs", "origin": [{"url": "/a"}]}
    return settings_from_dict({**base, **raw})


def test_nothing_changed() -> None:
    plan = plan_reload(settings(), settings())
    assert (plan.changed, plan.needs_restart, plan.origins_changed, plan.resync) == (
        (),
        (),
        False,
        False,
    )


def test_limits_apply_and_mount_bound_settings_wait_for_a_restart() -> None:
    running = settings()
    loaded = settings(
        state_dir="/elsewhere",
        fuse={"read_deadline": "3s", "max_tasks": 8, "allow_other": True},
        cache={"max_size": "1G", "chunk_size": "4M"},
        log_level="debug",
    )
    plan = plan_reload(running, loaded)
    assert set(plan.changed) == {"fuse.read_deadline", "cache.max_size", "log_level"}
    assert set(plan.needs_restart) == {
        "state_dir",
        "fuse.max_tasks",
        "fuse.allow_other",
        "cache.chunk_size",
    }
    s = plan.settings
    assert s.fuse.read_deadline == 3 and s.cache.max_size == 1024**3 and s.log_level == "debug"
    # ... while the restart-only ones keep their running values.
    assert s.state_dir == running.state_dir and s.fuse.max_tasks == running.fuse.max_tasks
    assert not s.fuse.allow_other and s.cache.chunk_size == running.cache.chunk_size
    assert not plan.origins_changed and not plan.resync


def test_new_origins_or_template_trigger_a_resync() -> None:
    plan = plan_reload(settings(), settings(origin=[{"url": "/a"}, {"url": "/b"}]))
    assert plan.origins_changed and plan.resync and plan.changed == ("origins",)
    plan = plan_reload(settings(), settings(timeouts={"operation": "1s"}))
    assert plan.origins_changed
    plan = plan_reload(settings(), settings(library={"template": "$artist/$title"}))
    assert plan.resync and not plan.origins_changed


def test_a_mountpoint_missing_from_the_file_is_not_a_change() -> None:
    running = settings()
    loaded = replace(settings(), mountpoint=None)
    assert plan_reload(running, loaded).needs_restart == ()


def test_daemon_applies_new_origins_and_limits_without_remounting(tmp_path: Path) -> None:
    lib, extra = tmp_path / "lib", tmp_path / "extra"
    make_library(lib, albums=1, tracks=2)
    make_library(extra / "more", albums=1, tracks=3)  # other paths: not a mirror
    running = settings_for(tmp_path, lib, read_deadline=8.0)

    async def main() -> None:
        daemon = await opened_daemon(running)
        assert daemon.ops is not None and daemon.library is not None
        ops, catalog = daemon.ops, daemon.library.catalog
        new = replace(
            running,
            origins=(*running.origins, replace(running.origins[0], url=str(extra), name="extra")),
            fuse=replace(running.fuse, read_deadline=2.0, max_tasks=3),
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(daemon.supervisor.run)
            daemon._start_background()
            applied = await daemon.apply_settings(new)
            assert "origins" in applied and "fuse.read_deadline" in applied
            assert [o.name for o in daemon.library.pool] == ["local", "extra"]
            assert ops.settings.read_deadline == 2.0
            assert ops.settings.max_tasks == running.fuse.max_tasks
            # The health monitor follows the new pool; the resync finds the new tracks.
            await trio.sleep(0.05)
            assert daemon.supervisor.status()["health"]["state"] == "running"
            with trio.fail_after(20):
                while sum(1 for _ in ops.tree.files()) < 5:
                    await trio.sleep(0.05)
            assert daemon.ops is ops and daemon.library.catalog is catalog  # same mount
            await daemon.shutdown()
            nursery.cancel_scope.cancel()
        daemon.lock.release()

    trio.run(main)
