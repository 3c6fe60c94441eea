"""Layer 1: a sync that changed nothing publishes nothing -- no new tree generation, no
search index diff -- however short ``library.scan_interval`` is; a sync that changed the
catalog, or a new naming template, publishes exactly once."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from musicfs.catalog.db import Catalog
from musicfs.catalog.tags import Tags
from musicfs.library.sync import sync_origin
from musicfs.origins.local import LocalOrigin
from tests.support.inprocess import running, settings_for
from tests.support.library import make_library, tagged_file


def published(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().endswith("published")]


def index_updates(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records if r.getMessage().startswith("search index: +"))


def test_unchanged_syncs_keep_the_tree_and_the_index(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=3)
    settings = settings_for(tmp_path, lib)
    settings = replace(settings, library=replace(settings.library, scan_interval=0.02))
    caplog.set_level(logging.INFO)

    async def syncs(daemon, count: int) -> None:  # type: ignore[no-untyped-def]
        target = daemon.library.syncs_finished + count
        with trio.fail_after(20):
            while daemon.library.syncs_finished < target:
                await trio.sleep(0.01)

    async def main() -> None:
        async with running(settings) as daemon:
            assert daemon.ops is not None and daemon.library is not None
            ops, library = daemon.ops, daemon.library
            first = ops.tree
            caplog.clear()
            async with trio.open_nursery() as nursery:
                assert daemon.sync_loop is not None
                nursery.start_soon(daemon.sync_loop.run)
                await syncs(daemon, 5)
                # Five syncs found nothing new: the same snapshot object, no publish, and
                # the search index was reconciled once (the first pass after start-up).
                assert ops.tree is first
                assert published(caplog) == []
                assert index_updates(caplog) == 1
                kept = f"tree: generation {first.generation} kept (the sync changed nothing)"
                assert kept in caplog.text

                # A new track: exactly one new generation, one index update.
                tagged_file(lib / "new.flac", "flac", Tags(artist="New", title="Fresh"))
                with trio.fail_after(20):
                    while ops.tree is first:
                        await trio.sleep(0.01)
                await syncs(daemon, 3)
                assert published(caplog) == [
                    f"tree: generation {first.generation + 1} with 4 tracks published"
                ]
                assert index_updates(caplog) == 2

                # A removed track: the same.
                (lib / "new.flac").unlink()
                with trio.fail_after(20):
                    while sum(1 for _ in ops.tree.files()) != 3:
                        await trio.sleep(0.01)
                await syncs(daemon, 3)
                assert len(published(caplog)) == 2
                assert index_updates(caplog) == 3

                # A new naming template changes every path without changing the catalog:
                # republished once.
                new = replace(
                    settings, library=replace(settings.library, template="$artist/$title")
                )
                await daemon.apply_settings(new)
                with trio.fail_after(20):
                    while len(published(caplog)) < 3:
                        await trio.sleep(0.01)
                await syncs(daemon, 3)
                assert len(published(caplog)) == 3
                assert index_updates(caplog) == 4
                assert library.tree_stale is False
                nursery.cancel_scope.cancel()

    trio.run(main)


def test_sync_reports_a_change_only_when_the_catalog_changed(tmp_path: Path) -> None:
    lib, mirror = tmp_path / "lib", tmp_path / "mirror"
    files = make_library(lib, albums=1, tracks=2)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    calls: list[str] = []

    def sync(origin: LocalOrigin, label: str) -> None:
        trio.run(
            lambda: sync_origin(catalog, origin, batch_size=1, on_batch=lambda: calls.append(label))
        )

    local = LocalOrigin("local", lib)
    sync(local, "first")
    assert calls == ["first", "first"]  # one call per committed batch of one file
    sync(local, "again")
    assert calls == ["first", "first"]  # nothing changed, nothing reported
    # A mirror that holds the same tracks: new sources, no tags read -- a change.
    shutil.copytree(lib, mirror)
    sync(LocalOrigin("mirror", mirror), "mirror")
    assert calls[2:] == ["mirror"]
    sync(LocalOrigin("mirror", mirror), "mirror again")
    assert calls[3:] == []
    # A file gone from one origin: a change, although the mirror still holds the track.
    files[0].unlink()
    sync(local, "removed")
    assert calls[3:] == ["removed"]
    sync(local, "removed again")
    assert calls[4:] == []
    catalog.close()
