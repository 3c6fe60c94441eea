"""The index's format: its tantivy schema and analyzer, the document of one track (with a
digest of its indexed values), and opening an index of this format -- on disk, checked
segment by segment, or a throw-away one in memory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import tantivy

from musicfs.catalog.tree import Node, TreeView, track_values

# Bump when the fields, their options or the analyzer change: older indexes are rebuilt.
SCHEMA_VERSION = 1
TEXT_FIELDS = ("artist", "albumartist", "album", "title", "genre", "path")
ANALYZER = "musicfs"
# tantivy wants at least 15 MB per writer thread; one thread is plenty for a library.
WRITER_HEAP = 32_000_000

# (track id, digest, field values) of one track.
Document = tuple[int, int, dict[str, str | int]]


def schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_unsigned_field("id", stored=True, indexed=True, fast=True)
    sb.add_unsigned_field("digest", fast=True)
    for name in TEXT_FIELDS:
        sb.add_text_field(name, stored=name == "path", tokenizer_name=ANALYZER)
    sb.add_integer_field("year", stored=True, indexed=True, fast=True)
    return sb.build()


def register_analyzer(index: tantivy.Index) -> None:
    # Case- and accent-insensitive: "island" finds "Ísland", "bjork" finds "Björk".
    analyzer = (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(100))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .build()
    )
    index.register_tokenizer(ANALYZER, analyzer)


def document(path: str, node: Node) -> Document:
    """(track id, digest, field values) of the file ``node`` at mounted ``path``."""
    track = node.track
    assert track is not None
    shown = track_values(track, multi_disc=False)
    values: dict[str, str | int] = {
        "artist": shown["artist"],
        "albumartist": shown["albumartist"],
        "album": shown["album"],
        "title": shown["title"],
        "genre": shown["genre"],
        "path": path,
    }
    if track.tags.year:
        values["year"] = track.tags.year
    blob = json.dumps(values, sort_keys=True, ensure_ascii=False).encode("utf-8")
    digest = int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "big")
    return track.id, digest, values


def documents(tree: TreeView) -> Iterator[Document]:
    """(track id, digest, field values) of every file in ``tree``, one at a time."""
    return (document(path, node) for path, node in tree.files_with_paths())


def make_doc(track_id: int, digest: int, values: dict[str, str | int]) -> tantivy.Document:
    doc = tantivy.Document()
    doc.add_unsigned("id", track_id)
    doc.add_unsigned("digest", digest)
    for name, value in values.items():
        if isinstance(value, int):
            doc.add_integer(name, value)
        elif value:
            doc.add_text(name, value)
    return doc


def load(directory: Path, *, create: bool) -> tantivy.Index:
    """Open the index in ``directory`` and read every committed id, touching each
    segment's files so that missing or damaged ones show up now rather than mid-query.
    tantivy reports damage as ValueError."""
    exists = (directory / "meta.json").exists()
    if exists and not tantivy.Index.is_compatible(str(directory)):
        raise ValueError("written by an incompatible tantivy version")
    if create:
        index = tantivy.Index(schema(), str(directory), reuse=True)
    else:
        index = tantivy.Index.open(str(directory))
        if index.schema != schema():
            raise ValueError("index schema differs from this MusicFS's schema")
    register_analyzer(index)
    index.reload()
    searcher = index.searcher()
    addresses = _every_address(searcher)
    if addresses:
        searcher.fast_field_values("id", addresses)
        searcher.fast_field_values("digest", addresses)
        searcher.doc(addresses[0])
        del addresses
    probe = index.parse_query("musicfs", list(TEXT_FIELDS))
    searcher.search(probe, limit=1)
    return index


def committed_digests(index: tantivy.Index) -> dict[int, int]:
    """Every committed (track id, digest)."""
    index.reload()
    searcher = index.searcher()
    known: dict[int, int] = {}
    addresses = _every_address(searcher)
    if addresses:
        ids = searcher.fast_field_values("id", addresses)
        digests = searcher.fast_field_values("digest", addresses)
        for i, d in zip(ids, digests, strict=True):
            if i is not None and d is not None:
                known[int(i)] = int(d)
    return known


def _every_address(searcher: tantivy.Searcher) -> list[tantivy.DocAddress]:
    if not searcher.num_docs:
        return []
    hits = searcher.search(tantivy.Query.all_query(), limit=searcher.num_docs).hits
    return [address for _, address in hits]


def memory_index(tree: TreeView) -> tantivy.Index:
    """A throw-away in-memory index of ``tree``, for readers that find the disk one broken."""
    index = tantivy.Index(schema())
    register_analyzer(index)
    writer = index.writer(heap_size=WRITER_HEAP, num_threads=1)
    for tid, digest, values in documents(tree):
        writer.add_document(make_doc(tid, digest, values))
    writer.commit()
    writer.wait_merging_threads()
    return index
