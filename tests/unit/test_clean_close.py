"""Layer 1: the stamp a clean close leaves on the catalog speaks for one start, and only
for the file exactly as it was left."""

from __future__ import annotations

import os
from pathlib import Path

from musicfs.catalog import clean_close
from musicfs.catalog.db import Catalog
from musicfs.catalog.tags import Tags


def closed_catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.sqlite"
    catalog = Catalog(path)
    catalog.upsert("o", [("a.flac", 1, 1, None, Tags(title="A"), None)])
    catalog.close()
    return path


def test_a_file_left_as_it_was_closed_is_trusted_once(tmp_path: Path) -> None:
    path = closed_catalog(tmp_path)
    assert not clean_close.take(path)  # never stamped
    clean_close.leave(path)
    assert clean_close.take(path)
    assert not clean_close.take(path)  # the stamp went with the first start


def test_a_written_or_replaced_file_is_not_trusted(tmp_path: Path) -> None:
    path = closed_catalog(tmp_path)
    clean_close.leave(path)
    with path.open("r+b") as f:  # a page overwritten in place
        f.seek(4096)
        f.write(b"\0" * 16)
    assert not clean_close.take(path)
    clean_close.leave(path)
    copy = tmp_path / "copy"
    copy.write_bytes(path.read_bytes())
    st = path.stat()
    os.replace(copy, path)  # same size, even the same mtime: another file
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not clean_close.take(path)


def test_a_wal_written_since_or_a_garbled_stamp_is_not_trusted(tmp_path: Path) -> None:
    path = closed_catalog(tmp_path)
    clean_close.leave(path)
    Path(f"{path}-wal").write_bytes(b"x" * 100)
    assert not clean_close.take(path)
    clean_close.leave(path)  # a WAL left as it was is part of the file as it was left
    assert clean_close.take(path)
    clean_close.leave(path)
    with open(f"{path}-wal", "ab") as f:
        f.write(b"more")
    assert not clean_close.take(path)
    clean_close.leave(path)
    Path(f"{path}.clean").write_text("{not json")
    assert not clean_close.take(path)
    assert not Path(f"{path}.clean").exists()
