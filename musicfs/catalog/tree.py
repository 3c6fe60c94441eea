"""The name tree built from catalog tracks: where each track goes and what it is called.

``place`` decides every folder and file name (the naming rules are ``naming.py``'s; name
collisions are numbered here, deterministically by origin path). Its result becomes rows
of the catalog's ``tree`` table, which the mount serves (``served.py``), or -- for a tree
nobody mounts (``musicfs search`` without a daemon) -- an in-memory ``Tree``.
"""

from __future__ import annotations

import os
import stat
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from musicfs.catalog.inodes import ROOT_INODE, dir_key, file_key
from musicfs.catalog.model import Track
from musicfs.catalog.naming import (
    AUNIQUE_MARKER,
    Template,
    display_text,
    sanitize_component,
    with_counter,
)

VARIOUS_ARTISTS = "Various Artists"
UNKNOWN_ARTIST = "Unknown Artist"
UNKNOWN_ALBUM = "Unknown Album"
DIR_MODE = stat.S_IFDIR | 0o555
FILE_MODE = stat.S_IFREG | 0o444


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
    track_id: int = 0  # a file's catalog track (``track`` may not be loaded)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class TreeView(Protocol):
    """What the FUSE operations and the search index need of a tree: the served one
    (``served.ServedTree``) or an in-memory ``Tree``."""

    @property
    def generation(self) -> int: ...
    @property
    def file_count(self) -> int: ...
    @property
    def total_bytes(self) -> int: ...
    @property
    def node_count(self) -> int: ...
    def get(self, ino: int) -> Node | None: ...
    def lookup(self, parent: int, name: bytes) -> Node | None: ...
    def entries(self, node: Node) -> list[tuple[bytes, Node]]: ...
    def track_of(self, node: Node) -> Track | None: ...
    def resolve(self, path: str) -> Node | None: ...
    def path_of(self, ino: int) -> str: ...
    def files(self) -> Iterable[Node]: ...
    def files_with_paths(self) -> Iterable[tuple[str, Node]]: ...


@dataclass(frozen=True)
class Tree:
    """An in-memory tree: for trees nobody mounts, and the interface ``ServedTree``
    offers the FUSE operations too."""

    nodes: dict[int, Node]
    generation: int = 0
    # Counted once when the tree is built: statfs and status ask all the time.
    file_count: int = 0
    total_bytes: int = 0

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

    @property
    def node_count(self) -> int:
        return len(self.nodes)

    def files(self) -> Iterable[Node]:
        return (n for n in self.nodes.values() if n.track is not None)

    def entries(self, node: Node) -> list[tuple[bytes, Node]]:
        """A folder's children in readdir order (a snapshot: offsets index into it)."""
        return [(name, self.nodes[node.children[name]]) for name in node.listing]

    def track_of(self, node: Node) -> Track | None:
        return node.track

    def files_with_paths(self) -> Iterable[tuple[str, Node]]:
        return ((self.path_of(n.ino), n) for n in self.files())

    def path_of(self, ino: int) -> str:
        parts = []
        node = self.nodes[ino]
        while node.ino != ROOT_INODE:
            parts.append(os.fsdecode(node.name))
            node = self.nodes[node.parent]
        return "/" + "/".join(reversed(parts))


def stem_and_ext(path: str) -> tuple[str, str]:
    base = path.rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        return base, ""
    return stem, "." + ext.lower()


def track_values(track: Track, multi_disc: bool) -> dict[str, str]:
    t = track.tags
    stem, ext = stem_and_ext(track.path)
    stem = display_text(stem)
    albumartist = (
        VARIOUS_ARTISTS
        if t.compilation and not t.albumartist
        else (t.albumartist or t.artist or UNKNOWN_ARTIST)
    )
    # No number: empty, so that the template leaves out its "NN - " prefix.
    number = f"{t.track:02d}" if t.track is not None else ""
    disc_track = f"{t.disc or 1}-{number}" if multi_disc and number else number
    return {
        "albumartist": albumartist,
        "artist": t.artist or t.albumartist or UNKNOWN_ARTIST,
        "album": t.album or UNKNOWN_ALBUM,
        "title": t.title or stem,
        "track": number,
        "disc": str(t.disc or 1),
        "disc_track": disc_track,
        "year": str(t.year) if t.year else "",
        "genre": t.genre or "",
        "ext": ext.lstrip("."),
        "stem": stem,
        "comp": "1" if t.compilation else "",
    }


def _album_identity(track: Track) -> tuple[str, str, int]:
    t = track.tags
    artist = (
        VARIOUS_ARTISTS
        if t.compilation and not t.albumartist
        else (t.albumartist or t.artist or UNKNOWN_ARTIST)
    )
    return (artist, t.album or UNKNOWN_ALBUM, t.year or 0)


def plan_paths(tracks: list[Track], template: Template) -> dict[int, list[str]]:
    """Track id -> sanitised path components (folders, then file name).

    Deterministic for a given catalog: the same tracks always get the same names.
    """
    by_id = {t.id: t for t in tracks}
    multi: dict[tuple[str, str, int], bool] = defaultdict(bool)
    for tr in tracks:
        if (tr.tags.disc or 1) > 1 or (tr.tags.disctotal or 1) > 1:
            multi[_album_identity(tr)] = True

    rendered: dict[int, list[str]] = {}
    identity: dict[int, tuple[str, str, int]] = {}
    for tr in tracks:
        ident = _album_identity(tr)
        # Folder names repeat for every track in them: one string object each.
        segs = template.render(track_values(tr, multi[ident]))
        rendered[tr.id] = [sys.intern(seg) for seg in segs[:-1]] + segs[-1:]
        identity[tr.id] = ident

    # %aunique{}: albums that would share a folder get their year (or a counter) appended.
    folder_albums: dict[tuple[str, ...], set[tuple[str, str, int]]] = defaultdict(set)
    for tid, segs in rendered.items():
        folder_albums[tuple(s.replace(AUNIQUE_MARKER, "") for s in segs[:-1])].add(identity[tid])
    result: dict[int, list[str]] = {}
    for tid, segs in rendered.items():
        folders = tuple(s.replace(AUNIQUE_MARKER, "") for s in segs[:-1])
        albums = folder_albums[folders]
        suffix = ""
        if len(albums) > 1:
            ident = identity[tid]
            years = [a[2] for a in albums]
            if ident[2] and years.count(ident[2]) == 1:
                suffix = f" [{ident[2]}]"
            else:
                suffix = f" [{sorted(albums).index(ident) + 1}]"
        parts = [
            sys.intern(sanitize_component(s.replace(AUNIQUE_MARKER, suffix))) for s in segs[:-1]
        ]
        _, ext = stem_and_ext(by_id[tid].path)
        parts.append(sanitize_component(segs[-1].replace(AUNIQUE_MARKER, suffix), suffix=ext))
        result[tid] = parts
    return result


@dataclass
class Placement:
    """Every folder (as name components; () is the root) and where each track goes."""

    dirs: dict[tuple[str, ...], dict[str, int]]  # folder -> file name -> track id
    placed: dict[int, tuple[tuple[str, ...], str]]  # track id -> (folder, file name)

    def keys(self) -> list[str]:
        """The inode keys of every folder and file."""
        return [dir_key(folder) for folder in self.dirs] + [file_key(t) for t in self.placed]


def place(tracks: list[Track], template: Template) -> Placement:
    """Plan the tree: deterministic for a given catalog (same tracks, same names)."""
    paths = plan_paths(tracks, template)
    by_id = {t.id: t for t in tracks}

    # Place files, resolving name collisions deterministically by origin path.
    dirs: dict[tuple[str, ...], dict[str, int]] = defaultdict(dict)
    dirs[()] = {}
    order = sorted(paths, key=lambda tid: os.fsencode(by_id[tid].path))
    placed: dict[int, tuple[tuple[str, ...], str]] = {}
    # (folder, wanted name) -> the counter to try first. Names are only ever added while
    # placing, so every counter below it is still taken: starting there gives the same
    # names as counting from 2, without re-trying them (5,000 identically tagged tracks
    # in one folder took 12-21 s that way).
    next_counter: dict[tuple[tuple[str, ...], str], int] = {}
    for tid in order:
        parts = paths[tid]
        folder = tuple(parts[:-1])
        for depth in range(len(folder)):
            dirs[folder[: depth + 1]]
        name = parts[-1]
        taken = dirs[folder]
        if name in taken or (*folder, name) in dirs:
            wanted = name
            stem, ext = stem_and_ext(name)
            n = next_counter.get((folder, wanted), 2)
            while True:
                candidate = with_counter(stem if ext else name, ext, n)
                if candidate not in taken and (*folder, candidate) not in dirs:
                    name = candidate
                    break
                n += 1
            next_counter[folder, wanted] = n + 1
        taken[name] = tid
        placed[tid] = (folder, name)
    return Placement(dict(dirs), placed)


# One row of the catalog's ``tree`` table: (ino, parent, name, track id or None for a
# folder, size, mtime_ns, subfolders).
TreeRow = tuple[int, int, bytes, int | None, int, int, int]


def tree_rows(
    placement: Placement, tracks: dict[int, Track], inos: dict[str, int]
) -> dict[int, TreeRow]:
    """The rows of ``placement`` by inode. A folder's mtime is the newest of the files
    directly in it (0 if none); its size 0."""
    rows: dict[int, TreeRow] = {}
    dir_ino = {folder: inos[dir_key(folder)] for folder in placement.dirs}
    subdirs: dict[int, int] = defaultdict(int)
    newest: dict[int, int] = defaultdict(int)
    for folder in placement.dirs:
        if folder:
            subdirs[dir_ino[folder[:-1]]] += 1
    for tid, (folder, name) in placement.placed.items():
        tr = tracks[tid]
        parent = dir_ino[folder]
        ino = inos[file_key(tid)]
        rows[ino] = (ino, parent, name.encode("utf-8"), tid, tr.size, tr.mtime_ns, 0)
        newest[parent] = max(newest[parent], tr.mtime_ns)
    for folder, ino in dir_ino.items():
        parent = dir_ino[folder[:-1]] if folder else ROOT_INODE
        dname = folder[-1].encode("utf-8") if folder else b""
        rows[ino] = (ino, parent, dname, None, 0, newest[ino], subdirs[ino])
    return rows


def build_tree(
    tracks: list[Track],
    template: Template,
    allocate_inodes: Callable[[Iterable[str]], dict[str, int]],
    *,
    generation: int = 0,
) -> Tree:
    """An in-memory tree. ``allocate_inodes`` maps stable keys to inode numbers (the
    catalog keeps them, so names keep their inodes across restarts)."""
    placement = place(tracks, template)
    by_id = {t.id: t for t in tracks}
    rows = tree_rows(placement, by_id, allocate_inodes(placement.keys()))
    return tree_of_rows(rows.values(), by_id, generation)


def tree_of_rows(rows: Iterable[TreeRow], tracks: dict[int, Track], generation: int = 0) -> Tree:
    nodes: dict[int, Node] = {}
    files = total = 0
    for ino, parent, name, tid, size, mtime_ns, subdirs in rows:
        if tid is None:
            nodes[ino] = Node(ino, parent, name, DIR_MODE, 0, mtime_ns, subdirs=subdirs)
        else:
            nodes[ino] = Node(
                ino, parent, name, FILE_MODE, size, mtime_ns, track=tracks[tid], track_id=tid
            )
            files += 1
            total += size
    for node in nodes.values():
        if node.ino != ROOT_INODE:
            nodes[node.parent].children[node.name] = node.ino
    for node in nodes.values():
        if node.is_dir:
            node.listing = sorted(node.children)
    return Tree(nodes, generation, file_count=files, total_bytes=total)


def empty_tree() -> Tree:
    return Tree({ROOT_INODE: Node(ROOT_INODE, ROOT_INODE, b"", DIR_MODE, 0, 0)})
