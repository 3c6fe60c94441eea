"""The tree builder as it was before the tree was served from the catalog (an object
graph of every track, rebuilt whole on each sync), kept as the reference the property
tests hold the served tree to. The names themselves come from production's
``plan_paths`` (naming rules change there); the placement, collision numbering and the
shape of the tree are the old builder's. Only the numbering loop starts from a remembered
counter (it was quadratic; the names are the same)."""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from musicfs.catalog.inodes import ROOT_INODE, dir_key, file_key
from musicfs.catalog.model import Track
from musicfs.catalog.naming import Template, with_counter
from musicfs.catalog.tree import plan_paths
from musicfs.catalog.tree import stem_and_ext as _stem_and_ext


@dataclass(slots=True)
class Node:
    ino: int
    parent: int
    name: bytes
    mode: int
    size: int
    mtime_ns: int
    track: Track | None = None
    children: dict[bytes, int] = field(default_factory=dict)
    # Sorted child names: readdir offsets index into this list.
    listing: list[bytes] = field(default_factory=list)
    subdirs: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass(frozen=True)
class Tree:
    nodes: dict[int, Node]
    generation: int = 0

    def get(self, ino: int) -> Node | None:
        return self.nodes.get(ino)

    def lookup(self, parent: int, name: bytes) -> Node | None:
        node = self.nodes.get(parent)
        if node is None:
            return None
        ino = node.children.get(name)
        return None if ino is None else self.nodes[ino]

    def resolve(self, path: str) -> Node | None:
        node = self.nodes[ROOT_INODE]
        for part in path.strip("/").split("/"):
            if not part:
                continue
            child = self.lookup(node.ino, os.fsencode(part))
            if child is None:
                return None
            node = child
        return node

    def files(self) -> Iterable[Node]:
        return (n for n in self.nodes.values() if n.track is not None)

    def path_of(self, ino: int) -> str:
        parts = []
        node = self.nodes[ino]
        while node.ino != ROOT_INODE:
            parts.append(os.fsdecode(node.name))
            node = self.nodes[node.parent]
        return "/" + "/".join(reversed(parts))


def build_tree(
    tracks: list[Track],
    template: Template,
    allocate_inodes: Callable[[Iterable[str]], dict[str, int]],
    *,
    generation: int = 0,
    mtime_ns: int = 0,
) -> Tree:
    """Build the tree. ``allocate_inodes`` maps stable keys to inode numbers (the catalog
    keeps them, so names keep their inodes across restarts)."""
    paths = plan_paths(tracks, template)
    by_id = {t.id: t for t in tracks}

    # Place files, resolving name collisions deterministically by origin path.
    dirs: dict[tuple[str, ...], dict[str, int]] = defaultdict(dict)  # folder -> name -> id
    dirs[()] = {}
    order = sorted(paths, key=lambda tid: os.fsencode(by_id[tid].path))
    placed: dict[int, tuple[tuple[str, ...], str]] = {}
    next_counter: dict[tuple[tuple[str, ...], str], int] = {}
    for tid in order:
        parts = paths[tid]
        folder = tuple(parts[:-1])
        for depth in range(len(folder)):
            dirs[folder[: depth + 1]]
        name = parts[-1]
        taken = dirs[folder]
        if name in taken or (*folder, name) in dirs:
            stem, ext = _stem_and_ext(name)
            n = next_counter.get((folder, parts[-1]), 2)
            while True:
                candidate = with_counter(stem if ext else name, ext, n)
                if candidate not in taken and (*folder, candidate) not in dirs:
                    name = candidate
                    break
                n += 1
            next_counter[folder, parts[-1]] = n + 1
        taken[name] = tid
        placed[tid] = (folder, name)

    keys = [dir_key(folder) for folder in dirs] + [file_key(tid) for tid in placed]
    inos = allocate_inodes(keys)

    nodes: dict[int, Node] = {}
    for folder in sorted(dirs, key=len):
        ino = inos[dir_key(folder)]
        parent = inos[dir_key(folder[:-1])] if folder else ROOT_INODE
        dname = folder[-1].encode("utf-8") if folder else b""
        nodes[ino] = Node(ino, parent, dname, stat.S_IFDIR | 0o555, 0, mtime_ns)
        if folder:
            parent_node = nodes[parent]
            parent_node.children[dname] = ino
            parent_node.subdirs += 1
    for tid, (folder, name) in placed.items():
        tr = by_id[tid]
        ino = inos[file_key(tid)]
        parent = inos[dir_key(folder)]
        bname = name.encode("utf-8")
        nodes[ino] = Node(ino, parent, bname, stat.S_IFREG | 0o444, tr.size, tr.mtime_ns, track=tr)
        nodes[parent].children[bname] = ino
    for node in nodes.values():
        if node.is_dir:
            node.listing = sorted(node.children)
            if node.mtime_ns == 0 and node.listing:
                node.mtime_ns = max(nodes[c].mtime_ns for c in node.children.values())
    return Tree(nodes, generation)


def empty_tree() -> Tree:
    return Tree({ROOT_INODE: Node(ROOT_INODE, ROOT_INODE, b"", stat.S_IFDIR | 0o555, 0, 0)})
