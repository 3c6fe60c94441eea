"""Layer 1: the tree served from the catalog's ``tree`` table.

It must be exactly the tree the old in-memory builder (``tests/support/reference_tree``)
built, for any catalog and after any sync; publishing must be atomic for readers on
another connection, and a crash mid-publish must leave the old tree."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from musicfs import failpoints
from musicfs.catalog.db import Catalog
from musicfs.catalog.inodes import ROOT_INODE
from musicfs.catalog.naming import DEFAULT_TEMPLATE, Template
from musicfs.catalog.served import ServedTree, publish
from musicfs.catalog.tags import Tags
from tests.support import reference_tree

# A small vocabulary makes collisions, shared albums, compilations and multi-disc
# albums likely -- the cases the naming rules are about.
words = st.sampled_from(["A", "B", "Same", "x/y", "..", "", "Ünï", "a" * 300])
maybe = st.one_of(st.none(), words)
tags = st.builds(
    Tags,
    title=maybe,
    artist=maybe,
    albumartist=maybe,
    album=maybe,
    track=st.one_of(st.none(), st.integers(0, 3)),
    disc=st.one_of(st.none(), st.integers(1, 2)),
    year=st.one_of(st.none(), st.sampled_from([1999, 2005])),
    compilation=st.booleans(),
)
paths = st.sampled_from(["a", "b/c", "b/d", "Z", "é/f", "dir/x"]).flatmap(
    lambda d: st.sampled_from([".flac", ".mp3", ".OGG", ""]).map(lambda e: d)
)
files = st.dictionaries(
    st.builds(
        lambda d, n, e: f"{d}/{n}{e}", paths, st.integers(0, 30), st.sampled_from([".flac", ".mp3"])
    ),
    st.tuples(st.integers(1, 10**6), st.integers(0, 5), tags),
    max_size=25,
)


def shape(tree) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    """path -> (ino, mode, size, mtime_ns, track id, subfolders) of every node."""
    out = {}
    stack = [("", tree.get(ROOT_INODE))]
    while stack:
        path, node = stack.pop()
        out[path or "/"] = [
            node.ino,
            node.mode,
            node.size,
            node.mtime_ns,
            node.track.id if isinstance(tree, reference_tree.Tree) and node.track else 0,
            node.subdirs,
        ]
        if isinstance(tree, reference_tree.Tree):
            children = [(name, tree.nodes[node.children[name]]) for name in node.listing]
        elif node.is_dir:
            children = tree.entries(node)
        else:
            children = []
            out[path][4] = node.track_id  # type: ignore[index]
        stack.extend((f"{path}/{name.decode()}", child) for name, child in children)
    return out


def _inodes(tree: ServedTree) -> dict[tuple[int, str], int]:
    return {(n.track.id, n.track.path): n.ino for n in tree.files() if n.track}


def reference(catalog: Catalog, template: Template):  # type: ignore[no-untyped-def]
    return reference_tree.build_tree(catalog.tracks(), template, catalog.inodes)


def upsert(catalog: Catalog, batch: dict[str, tuple[int, int, Tags]]) -> None:
    catalog.upsert("o", [(p, size, mtime, None, t, None) for p, (size, mtime, t) in batch.items()])


@given(files, st.lists(st.tuples(files, st.lists(st.integers(0, 40), max_size=8)), max_size=3))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_served_tree_is_the_old_builders_tree_after_any_syncs(first, syncs) -> None:  # type: ignore[no-untyped-def]
    template = Template(DEFAULT_TEMPLATE)
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(Path(tmp) / "catalog.sqlite")
        upsert(catalog, first)
        tree = publish(catalog, template)
        assert shape(tree) == shape(reference(catalog, template))
        inodes = _inodes(tree)
        for changed, removals in syncs:
            upsert(catalog, changed)
            known = sorted(catalog.known_sources("o"))
            catalog.remove_sources("o", [known[i % len(known)] for i in removals if known])
            tree = publish(catalog, template)
            assert shape(tree) == shape(reference(catalog, template))
            assert tree.file_count == len(catalog.tracks())
            # A track that stayed in the catalog keeps its inode.
            now = _inodes(tree)
            assert {k: now[k] for k in inodes.keys() & now.keys()} == {
                k: inodes[k] for k in inodes.keys() & now.keys()
            }
            inodes = now
        catalog.close()


def test_a_crash_mid_publish_leaves_the_old_tree(tmp_path: Path) -> None:
    template = Template(DEFAULT_TEMPLATE)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    upsert(catalog, {"a.flac": (1, 1, Tags(title="Old", artist="A", album="B"))})
    before = shape(publish(catalog, template))
    upsert(catalog, {"b.flac": (1, 1, Tags(title="New", artist="C", album="D"))})
    failpoints.set("tree.publish", "panic")
    with pytest.raises(failpoints.FailpointPanic):
        publish(catalog, template)
    failpoints.clear()
    state = catalog.tree_state()
    assert state.generation == 1 and state.files == 1
    assert shape(ServedTree(catalog, state)) == before
    catalog.close()
    # And after a restart too.
    again = Catalog(tmp_path / "catalog.sqlite")
    assert shape(ServedTree(again, again.tree_state())) == before


def test_readers_on_the_loop_see_the_old_or_the_new_tree_never_a_mix(tmp_path: Path) -> None:
    """Two trees published in turn as fast as possible while another connection walks
    folders: each listing is exactly one of the two trees' listings of that folder."""
    template = Template(DEFAULT_TEMPLATE)
    catalog = Catalog(tmp_path / "catalog.sqlite")
    one = {
        f"{a}/{t}.flac": (1, 1, Tags(title=f"T{t}", artist=f"A{a}", album="X", track=t))
        for a in range(5)
        for t in range(40)
    }
    two = {
        p: (2, 2, Tags(title=f"{t.title} v2", artist=t.artist, album="X", track=t.track))
        for p, (_, _, t) in one.items()
    }
    upsert(catalog, one)
    tree = publish(catalog, template)
    listings: dict[bytes, set[tuple[bytes, ...]]] = {}

    def record(tree: ServedTree) -> None:
        for artist, node in tree.entries(tree.get(ROOT_INODE)):  # type: ignore[arg-type]
            (_, folder) = tree.entries(node)[0]
            listings.setdefault(artist, set()).add(tuple(n for n, _ in tree.entries(folder)))

    record(tree)
    upsert(catalog, two)
    record(publish(catalog, template))
    assert all(len(v) == 2 for v in listings.values())
    stop = threading.Event()
    published = 0

    def publisher() -> None:
        nonlocal published
        while not stop.is_set():
            upsert(catalog, one if published % 2 else two)
            publish(catalog, template)
            published += 1

    thread = threading.Thread(target=publisher)
    thread.start()
    seen = 0
    try:
        while published < 20:
            root = tree.get(ROOT_INODE)
            assert root is not None
            for artist, node in tree.entries(root):
                for _, folder in tree.entries(node):
                    assert tuple(n for n, _ in tree.entries(folder)) in listings[artist]
                    seen += 1
    finally:
        stop.set()
        thread.join()
    assert seen > 20
