"""Running a query against an index: parse it, search, and return hits as mounted paths.
A query the index cannot parse or run is the query's fault (``QueryError``), never taken
for a broken index."""

from __future__ import annotations

from dataclasses import dataclass

import tantivy

from musicfs.search.documents import TEXT_FIELDS, register_analyzer, schema

DEFAULT_LIMIT = 100


class QueryError(ValueError):
    """The query text could not be parsed; the message says where."""


@dataclass(frozen=True)
class Hit:
    path: str
    score: float


def run_query(index: tantivy.Index, query: str, limit: int) -> list[Hit]:
    fields = [*TEXT_FIELDS, "year"]
    try:
        parsed = index.parse_query(query, fields, conjunction_by_default=True)
    except ValueError as exc:
        raise QueryError(f"cannot parse query {query!r}: {exc}") from exc
    index.reload()
    searcher = index.searcher()
    try:
        hits = searcher.search(parsed, limit=max(1, limit)).hits
    except ValueError as exc:
        # tantivy parses some queries it cannot run (`x:*` on a field that does not exist
        # or is not a fast field): the query's fault, not a broken index -- which would
        # be rebuilt -- if an empty index with the same schema refuses it too.
        if _refused_by_schema(parsed):
            raise QueryError(f"cannot run query {query!r}: {exc}") from exc
        raise
    result = []
    for score, address in hits:
        path = searcher.doc(address).get_first("path")
        if isinstance(path, str):
            result.append(Hit(path, float(score)))
    # Equal scores come back in segment order; paths make the output stable.
    result.sort(key=lambda hit: (-hit.score, hit.path))
    return result


_EMPTY: list[tantivy.Index] = []


def _refused_by_schema(parsed: tantivy.Query) -> bool:
    if not _EMPTY:
        _EMPTY.append(tantivy.Index(schema()))
        register_analyzer(_EMPTY[0])
    try:
        _EMPTY[0].searcher().search(parsed, limit=1)
    except ValueError:
        return True
    return False
