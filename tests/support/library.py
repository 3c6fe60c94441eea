"""Build tagged test libraries out of the committed audio fixtures."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from musicfs.catalog.tags import Tags
from musicfs.catalog.tree import Tree
from musicfs.demo import FORMATS, write_tags
from musicfs.search import SearchIndex

# The tests' own copy, not musicfs.demo.fixtures_dir(): under pytest's importlib mode the
# musicfs being tested is an installed one, whose fixtures may live elsewhere or nowhere.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def tagged_file(dest: Path, fmt: str, tags: Tags) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(FIXTURES / f"tone.{fmt}", dest)
    write_tags(dest, tags)
    return dest


def make_library(root: Path, albums: int = 3, tracks: int = 4, *, pad_to: int = 0) -> list[Path]:
    """``albums`` x ``tracks`` tagged files in rotating formats. ``pad_to`` appends bytes to
    make files bigger (players only see the audio; tests see many chunks)."""
    made = []
    for a in range(albums):
        for t in range(tracks):
            fmt = FORMATS[(a + t) % len(FORMATS)]
            path = root / f"artist{a % 2}" / f"album{a}" / f"{t + 1:02d}.{fmt}"
            tagged_file(
                path,
                fmt,
                Tags(
                    title=f"Song {a}-{t}",
                    artist=f"Artist {a % 2}",
                    album=f"Album {a}",
                    track=t + 1,
                    year=2000 + a,
                ),
            )
            if pad_to and path.stat().st_size < pad_to:
                with path.open("ab") as f:
                    f.write(_noise(pad_to - path.stat().st_size, seed=str(path)))
            made.append(path)
    return made


def make_padded_library(root: Path, albums: int, tracks: int, size: int) -> list[Path]:
    """Tagged FLAC and MP3 files padded to ``size`` bytes: unlike Ogg's, their tags
    survive the padding, so every track can be found by its tags (pins, search)."""
    made = []
    for a in range(albums):
        for t in range(tracks):
            fmt = ("flac", "mp3")[(a + t) % 2]
            path = tagged_file(
                root / f"album{a}" / f"{t + 1:02d}.{fmt}",
                fmt,
                Tags(
                    title=f"Song {a}-{t}", artist=f"Artist {a % 2}", album=f"Album {a}", track=t + 1
                ),
            )
            with path.open("ab") as f:
                f.write(_noise(size - path.stat().st_size, seed=str(path)))
            made.append(path)
    return made


@contextlib.contextmanager
def indexed_library(base: Path) -> Iterator[tuple[Tree, SearchIndex]]:
    """A scanned 2 x 2 library under ``base`` with its search index, for hostile queries."""
    from musicfs.catalog.db import Catalog
    from musicfs.catalog.naming import DEFAULT_TEMPLATE
    from musicfs.search import tree_from_catalog
    from tests.support.daemon import scan

    make_library(base / "lib", albums=2, tracks=2)
    scan(base / "lib", base / "state")
    catalog = Catalog(base / "state" / "catalog.sqlite")
    tree = tree_from_catalog(catalog, DEFAULT_TEMPLATE)
    catalog.close()
    with SearchIndex(base / "state" / "search") as index:
        index.update(tree)
        yield tree, index


def _noise(n: int, seed: str) -> bytes:
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:n])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
