"""Layer 1: a tree planned and published by a child process (``publish_process``) is the
tree a publish in the daemon's own process makes; a child that dies mid-publish leaves
the old tree published and the coordinator still owing a publish."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from musicfs import failpoints
from musicfs.catalog.db import Catalog
from musicfs.catalog.naming import DEFAULT_TEMPLATE, Template
from musicfs.catalog.publish_process import (
    PUBLISHER_NICENESS,
    PublishFailed,
    publish_in_child,
)
from musicfs.catalog.served import ServedTree, publish
from musicfs.catalog.tags import Tags
from musicfs.library.coordinator import SyncCoordinator, open_pool
from tests.support.inprocess import settings_for
from tests.support.library import make_library
from tests.unit.test_served_tree import shape, upsert

TEMPLATE = Template(DEFAULT_TEMPLATE)


def library(catalog: Catalog, version: int) -> None:
    upsert(
        catalog,
        {
            f"{a}/{t}.flac": (
                1000 + t,
                version,
                Tags(title=f"T{t} v{version}", artist=f"A{a}", album="X", track=t % 3),
            )
            for a in range(3)
            for t in range(10 + version)
        },
    )


def test_a_child_publishes_the_tree_a_thread_would(tmp_path: Path) -> None:
    here, there = Catalog(tmp_path / "here.sqlite"), Catalog(tmp_path / "there.sqlite")
    for version in (1, 2):
        library(here, version)
        library(there, version)
        expected = shape(publish(here, TEMPLATE))
        done = publish_in_child(there, TEMPLATE)
        assert done.state.generation == version and done.state.files == 3 * (10 + version)
        assert done.peak_rss_kib > 0
        # Planning is background work: below the daemon's CPU priority.
        assert done.niceness == min(19, os.nice(0) + PUBLISHER_NICENESS)
        assert shape(ServedTree(there, there.tree_state())) == expected


def test_a_child_dying_mid_publish_leaves_the_old_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    library(catalog, 1)
    before = shape(publish(catalog, TEMPLATE))
    library(catalog, 2)
    # The child reads its failpoints from the environment, as a daemon's would.
    monkeypatch.setenv(failpoints.ENV_VAR, "tree.publish=exit(9)")
    with pytest.raises(PublishFailed):
        publish_in_child(catalog, TEMPLATE)
    monkeypatch.setenv(failpoints.ENV_VAR, "tree.publish=panic")
    with pytest.raises(failpoints.FailpointPanic):
        publish_in_child(catalog, TEMPLATE)
    assert catalog.tree_state().generation == 1
    assert shape(ServedTree(catalog, catalog.tree_state())) == before
    monkeypatch.delenv(failpoints.ENV_VAR)
    assert publish_in_child(catalog, TEMPLATE).state.generation == 2


def test_the_coordinator_plans_in_a_child_and_owes_a_publish_that_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=3)
    settings = settings_for(tmp_path, lib)
    catalog = Catalog(settings.catalog_path)
    pool = open_pool(settings)
    coordinator = SyncCoordinator(settings, catalog, pool, process_publish_min=0)
    trio.run(coordinator.sync)
    assert coordinator.tree_stale
    monkeypatch.setenv(failpoints.ENV_VAR, "tree.publish=exit(9)")
    with pytest.raises(PublishFailed):
        coordinator._publish()
    assert coordinator.tree_stale and catalog.tree_state().generation == 0
    monkeypatch.delenv(failpoints.ENV_VAR)
    tree = coordinator._publish()
    assert not coordinator.tree_stale
    assert (tree.generation, tree.file_count) == (1, 6)
    catalog.close()
