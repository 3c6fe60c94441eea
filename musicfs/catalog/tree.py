"""The immutable name tree served over FUSE, built from catalog tracks.

A ``Tree`` is never changed after it is built: a sync builds a new one and the FUSE layer
swaps the reference, so a reader never sees half an update.
"""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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

    def path_of(self, ino: int) -> str:
        parts = []
        node = self.nodes[ino]
        while node.ino != ROOT_INODE:
            parts.append(os.fsdecode(node.name))
            node = self.nodes[node.parent]
        return "/" + "/".join(reversed(parts))


def _stem_and_ext(path: str) -> tuple[str, str]:
    base = path.rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        return base, ""
    return stem, "." + ext.lower()


def track_values(track: Track, multi_disc: bool) -> dict[str, str]:
    t = track.tags
    stem, ext = _stem_and_ext(track.path)
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
        rendered[tr.id] = template.render(track_values(tr, multi[ident]))
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
        parts = [sanitize_component(s.replace(AUNIQUE_MARKER, suffix)) for s in segs[:-1]]
        _, ext = _stem_and_ext(by_id[tid].path)
        parts.append(sanitize_component(segs[-1].replace(AUNIQUE_MARKER, suffix), suffix=ext))
        result[tid] = parts
    return result


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
            stem, ext = _stem_and_ext(name)
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
    return Tree(
        nodes,
        generation,
        file_count=len(placed),
        total_bytes=sum(by_id[tid].size for tid in placed),
    )


def empty_tree() -> Tree:
    return Tree({ROOT_INODE: Node(ROOT_INODE, ROOT_INODE, b"", stat.S_IFDIR | 0o555, 0, 0)})
