"""Layer 1: the search index follows the published tree by what changed in it.

An index updated from the changes of each publish holds exactly the documents a walk of
the whole tree gives, for random catalogs and random syncs; an index already in line with
the published tree reads nothing at all (a restart that found nothing new); a catalog
rebuilt from scratch, or a crash between the index's commit and its marker, makes the
next update right again."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicfs.catalog.db import Catalog
from musicfs.catalog.naming import DEFAULT_TEMPLATE, Template
from musicfs.catalog.served import ServedTree, publish
from musicfs.catalog.tags import Tags
from musicfs.search import SearchIndex
from musicfs.search import documents as search_documents
from musicfs.search.marker import MARKER
from tests.unit.test_served_tree import files, upsert

TEMPLATE = Template(DEFAULT_TEMPLATE)


def documents(tree: ServedTree) -> dict[int, int]:
    """What a walk of the whole tree puts in an index: track id -> digest."""
    return {tid: digest for tid, digest, _ in search_documents.documents(tree)}


def held(index: SearchIndex) -> dict[int, int]:
    assert index._index is not None
    return search_documents.committed_digests(index._index)


@given(files, st.lists(st.tuples(files, st.lists(st.integers(0, 40), max_size=8)), max_size=3))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_an_index_fed_the_changes_holds_what_a_whole_walk_gives(first, syncs) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(Path(tmp) / "catalog.sqlite")
        upsert(catalog, first)
        with SearchIndex(Path(tmp) / "search") as index:
            index.update(publish(catalog, TEMPLATE))
            for changed, removals in syncs:
                upsert(catalog, changed)
                known = sorted(catalog.known_sources("o"))
                catalog.remove_sources("o", [known[i % len(known)] for i in removals if known])
                tree = publish(catalog, TEMPLATE)
                index.update(tree)
                assert index.indexed_generation == tree.generation
                assert held(index) == documents(tree)
        catalog.close()


def _library(catalog: Catalog, version: int) -> None:
    upsert(
        catalog,
        {
            f"{a}/{t}.flac": (1, version, Tags(title=f"T{t} v{version}", artist=f"A{a}"))
            for a in range(3)
            for t in range(5)
        },
    )


def test_an_index_in_line_with_the_tree_reads_nothing_even_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    _library(catalog, 1)
    tree = publish(catalog, TEMPLATE)
    with SearchIndex(tmp_path / "search") as index:
        assert index.update(tree).added == 15

    def no_reading(*args: object) -> None:
        raise AssertionError("the tree was read")

    monkeypatch.setattr(ServedTree, "files_with_paths", no_reading)
    monkeypatch.setattr(ServedTree, "changes_since", no_reading)
    with SearchIndex(tmp_path / "search") as index:  # the next start
        stats = index.update(ServedTree(catalog, catalog.tree_state()))
        assert (stats.added, stats.removed, stats.total) == (0, 0, 15)
    monkeypatch.undo()
    # A retitle of one artist is 5 changed documents, not 15.
    upsert(catalog, {f"1/{t}.flac": (1, 2, Tags(title=f"New {t}", artist="A1")) for t in range(5)})
    tree = publish(catalog, TEMPLATE)
    with SearchIndex(tmp_path / "search") as index:
        stats = index.update(tree)
        assert (stats.added, stats.total) == (5, 15)
        assert len(index.search("new")) == 5 and held(index) == documents(tree)


def test_a_catalog_rebuilt_from_scratch_is_indexed_whole(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    _library(catalog, 1)
    with SearchIndex(tmp_path / "search") as index:
        index.update(publish(catalog, TEMPLATE))
    catalog.close()
    (tmp_path / "catalog.sqlite").unlink()
    rebuilt = Catalog(tmp_path / "catalog.sqlite")  # generation 1 again, other tracks
    upsert(rebuilt, {"x/1.flac": (1, 1, Tags(title="Only", artist="Z"))})
    tree = publish(rebuilt, TEMPLATE)
    assert tree.generation == 1
    with SearchIndex(tmp_path / "search") as index:
        index.update(tree)
        assert held(index) == documents(tree)
        assert [h.path for h in index.search("only")] == ["/Z/Unknown Album/Only.flac"]


def test_a_crash_between_the_commit_and_the_marker_is_made_good(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    _library(catalog, 1)
    with SearchIndex(tmp_path / "search") as index:
        index.update(publish(catalog, TEMPLATE))
    marker = tmp_path / "search" / MARKER
    old = marker.read_text()
    _library(catalog, 2)
    with SearchIndex(tmp_path / "search") as index:
        index.update(publish(catalog, TEMPLATE))
    marker.write_text(old)  # the commit landed, the marker did not
    with SearchIndex(tmp_path / "search") as index:
        tree = ServedTree(catalog, catalog.tree_state())
        assert index.update(tree).added == 15  # redone
        assert held(index) == documents(tree)
    assert json.loads(marker.read_text())["tree"]["generation"] == 2


def test_a_rescan_that_changes_no_name_still_reaches_the_index(tmp_path: Path) -> None:
    """A year or genre read anew (same size, same mtime, same file name): no tree row
    changes, the track's change stamp does."""
    catalog = Catalog(tmp_path / "catalog.sqlite")
    upsert(catalog, {"a.flac": (1, 1, Tags(title="T", artist="A", album="B", genre="Folk"))})
    with SearchIndex(tmp_path / "search") as index:
        index.update(publish(catalog, TEMPLATE))
        upsert(catalog, {"a.flac": (1, 1, Tags(title="T", artist="A", album="B", genre="Jazz"))})
        tree = publish(catalog, TEMPLATE)
        assert index.update(tree).added == 1
        assert [h.path for h in index.search("genre:jazz")] == ["/A/B/T.flac"]
        assert held(index) == documents(tree)
