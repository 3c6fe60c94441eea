"""Pins: what they are and which tracks they hold -- pure functions, no I/O.

A pin is stored in the catalog as what the user typed: a search query (``artist:björk``)
or a path in the mount (``/Björk/Homogenic (1997)``). Which tracks it holds is worked out
again after every sync (a "smart pin": the album added next month is fetched too), in pin
order: the oldest pin first, a track two pins share counted once. Pins never hold more
than the cache can keep: a new pin that would not fit is refused with the numbers, and a
smart pin that outgrows the cache keeps the tracks that fit and says how many did not.

The manager that applies this to the cache and fetches the tracks is ``pins/manager.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from musicfs.catalog.model import Track
from musicfs.catalog.tree import Node, TreeView
from musicfs.pins.settings import PinSettings as PinSettings

KINDS = ("query", "path")
# query, limit -> mounted paths of the matching tracks, best first (blocking; raises
# ``search.QueryError`` for a query that cannot be parsed)
SearchPaths = Callable[[str, int], Sequence[str]]


class PinError(ValueError):
    """The pin cannot be made or found (bad query, nothing matches, no such pin)."""


class PinRefused(PinError):
    """Pinning this would need more room than the cache has; the message gives numbers."""


@dataclass(frozen=True)
class PinSpec:
    kind: str  # "query" or "path"
    text: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PinError(f"unknown pin kind {self.kind!r}")
        if not self.text.strip():
            raise PinError("an empty pin")

    @classmethod
    def path(cls, mounted: str) -> PinSpec:
        """A path pin for ``mounted``, a path inside the mount ("/Artist/Album")."""
        parts = [p for p in mounted.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise PinError(f"{mounted!r}: '..' in a pinned path")
        return cls("path", "/" + "/".join(parts))

    def label(self) -> str:
        return self.text


@dataclass(frozen=True)
class Pin:
    id: int
    spec: PinSpec
    created_at: int


@dataclass
class PinPlan:
    """Which tracks the pins hold, oldest pin first."""

    capacity: int
    tracks: dict[bytes, Track] = field(default_factory=dict)  # version -> track, in order
    by_pin: dict[int, list[Track]] = field(default_factory=dict)  # what each pin matched
    left_out: dict[int, int] = field(default_factory=dict)  # pin id -> tracks that did not fit
    bytes: int = 0

    def chunks(self, chunk_size: int) -> Iterator[tuple[Track, int]]:
        for track in self.tracks.values():
            for n in range(chunk_count(track.size, chunk_size)):
                yield track, n


def chunk_count(size: int, chunk_size: int) -> int:
    return (size + chunk_size - 1) // chunk_size


def _files_under(tree: TreeView, node: Node) -> Iterator[Track]:
    if not node.is_dir:
        track = tree.track_of(node)
        if track is not None:
            yield track
        return
    for _, child in tree.entries(node):
        yield from _files_under(tree, child)


def resolve(spec: PinSpec, tree: TreeView, search: SearchPaths) -> list[Track]:
    """The tracks ``spec`` matches in ``tree``, in tree (path) order. Blocking."""
    if spec.kind == "path":
        node = tree.resolve(spec.text)
        return [] if node is None else list(_files_under(tree, node))
    limit = max(1, tree.file_count)
    found = ((p, tree.resolve(p)) for p in search(spec.text, limit))
    # resolve() loads a file's track; folders (and tracks gone since) have none.
    hits = sorted(((p, n) for p, n in found if n is not None and n.track), key=lambda h: h[0])
    return [n.track for _, n in hits if n.track is not None]


def plan(matches: Sequence[tuple[Pin, list[Track]]], capacity: int) -> PinPlan:
    """Fill the pins in order until the cache is full: a track that does not fit is left
    out (and counted against its pin); smaller ones after it may still fit."""
    result = PinPlan(capacity)
    for pin, tracks in matches:
        result.by_pin[pin.id] = tracks
        for track in tracks:
            version = track.version_key
            if version in result.tracks:
                continue
            if result.bytes + track.size > capacity:
                result.left_out[pin.id] = result.left_out.get(pin.id, 0) + 1
                continue
            result.tracks[version] = track
            result.bytes += track.size
    return result


def check_room(current: PinPlan, spec: PinSpec, tracks: list[Track], cache_note: str) -> None:
    """Raise ``PinRefused`` if ``tracks`` do not fit beside what the pins hold already."""
    new = {t.version_key: t for t in tracks if t.version_key not in current.tracks}
    needed = sum(t.size for t in new.values())
    if current.bytes + needed <= current.capacity:
        return
    total = sum(t.size for t in {t.version_key: t for t in tracks}.values())
    raise PinRefused(
        f"refused: pinning {spec.label()!r} needs {mib(total)} for {len(tracks)} tracks "
        f"({mib(needed)} not pinned yet); pins already hold {mib(current.bytes)} and the "
        f"cache can hold {mib(current.capacity)} ({cache_note}): "
        f"{mib(current.bytes + needed - current.capacity)} too much; raise cache.max_size "
        "or unpin something"
    )


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 10 * 2**30 else f"{n / 2**30:.1f} GiB"


def specs_from_args(words: Sequence[str], mount_root: Callable[[str], str | None]) -> list[PinSpec]:
    """What ``musicfs pin WORDS...`` means: paths in a MusicFS mount (``mount_root`` gives
    the mount point holding a path, or None), one pin each; else one query of all words."""
    if not words or not all(os.path.exists(w) for w in words):
        return [PinSpec("query", " ".join(words))]
    specs = []
    for word in words:
        path = os.path.abspath(word)
        root = mount_root(path)
        if root is None:
            raise PinError(f"{word}: not inside a MusicFS mount (pin a query instead)")
        specs.append(PinSpec.path(path[len(root.rstrip("/")) :] or "/"))
    return specs
