"""The index's marker file: which schema version wrote the index and which published tree
its committed documents are in line with (``SearchIndex`` reads only the changes since).

It is written after tantivy's commit: a crash between the two makes the next update redo
changes the index already has, which is harmless. It goes last after a rebuild too, so a
crash mid-rebuild leaves no valid marker and the next start rebuilds again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from musicfs.catalog.published_tree import TreeState
from musicfs.search.documents import SCHEMA_VERSION

MARKER = "musicfs-search.json"

# What the marker records of a tree: its catalog, generation and catalog version.
TreeIdentity = dict[str, str | int]


def tree_identity(state: TreeState) -> TreeIdentity | None:
    """What the marker records of the tree an index holds (None: not a catalog's)."""
    if not state.catalog_id or not state.generation:
        return None
    return {
        "catalog": state.catalog_id,
        "generation": state.generation,
        "catalog_version": state.catalog_version,
    }


class IndexMarker:
    """The marker of the index in ``directory``."""

    def __init__(self, directory: Path):
        self.directory = directory

    def _read(self) -> dict[str, object]:
        try:
            data = json.loads((self.directory / MARKER).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def schema_version(self) -> int | None:
        version = self._read().get("schema_version")
        return version if isinstance(version, int) else None

    def tree(self) -> TreeIdentity | None:
        """The tree the committed index is in line with, as the marker records it."""
        tree = self._read().get("tree")
        return tree if isinstance(tree, dict) else None

    def write(self, tree: TreeIdentity | None = None) -> None:
        """The schema version, and the tree the committed index is in line with."""
        target = self.directory / MARKER
        tmp = target.with_suffix(".tmp")
        with open(tmp, "w") as f:
            version = SCHEMA_VERSION
            json.dump({"schema_version": version, **({"tree": tree} if tree else {})}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def problem(self) -> str | None:
        """Why the on-disk index cannot be used as it is, or None if it can."""
        if not (self.directory / "meta.json").exists():
            return "missing"
        version = self.schema_version()
        if version is None:
            return "no valid schema marker (an interrupted rebuild?)"
        if version != SCHEMA_VERSION:
            return f"schema version {version}, this MusicFS writes {SCHEMA_VERSION}"
        return None
