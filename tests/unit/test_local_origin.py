import errno
import os
from pathlib import Path

import pytest
import trio

from musicfs.origins.base import OriginError
from musicfs.origins.local import LocalOrigin


def run(fn, *args):
    return trio.run(fn, *args)


def test_lists_reads_and_stats(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.flac").write_bytes(b"0123456789")
    origin = LocalOrigin("o", tmp_path)
    listing = run(origin.list)
    assert [(e.path, e.size) for e in listing.entries] == [("a/x.flac", 10)]
    assert run(origin.read, "a/x.flac", 3, 4) == b"3456"
    assert run(origin.read, "a/x.flac", 8, 100) == b"89"
    assert run(origin.stat, "a/x.flac").size == 10


def test_symlinks_escaping_the_root_are_skipped_and_refused(tmp_path: Path, caplog) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.flac").write_bytes(b"secret")
    (root / "inside.flac").write_bytes(b"ok")
    (root / "escape.flac").symlink_to(outside / "secret.flac")
    (root / "escape_dir").symlink_to(outside)
    (root / "alias.flac").symlink_to(root / "inside.flac")
    origin = LocalOrigin("o", root)
    paths = sorted(e.path for e in run(origin.list).entries)
    assert paths == ["alias.flac", "inside.flac"]
    assert "escapes the origin root" in caplog.text
    with pytest.raises(OriginError) as info:
        run(origin.read, "escape.flac", 0, 10)
    assert info.value.errno == errno.EACCES
    for bad in ("../outside/secret.flac", "/etc/passwd", "a/../../x"):
        with pytest.raises(OriginError):
            run(origin.read, bad, 0, 10)


def test_a_symlinked_folder_on_the_way_is_checked_whatever_it_points_at(tmp_path: Path) -> None:
    """Reads resolve the path below the (remembered) real root one component at a time; a
    symlink anywhere on the way is resolved in full and must stay inside the root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "real" / "album").mkdir(parents=True)
    (outside / "album").mkdir(parents=True)
    (root / "real" / "album" / "t.flac").write_bytes(b"inside")
    (outside / "album" / "t.flac").write_bytes(b"secret")
    (root / "alias").symlink_to(root / "real")  # a folder alias that stays inside
    (root / "away").symlink_to(outside)  # a folder that leads out
    origin = LocalOrigin("o", root)
    assert run(origin.read, "real/album/t.flac", 0, 10) == b"inside"
    assert run(origin.read, "alias/album/t.flac", 0, 10) == b"inside"
    with pytest.raises(OriginError) as info:
        run(origin.read, "away/album/t.flac", 0, 10)
    assert info.value.errno == errno.EACCES
    with pytest.raises(OriginError) as info:
        run(origin.read, "real/missing/t.flac", 0, 10)
    assert info.value.errno == errno.ENOENT


def test_a_root_that_is_a_symlink_is_followed_again_by_the_next_check(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    (tmp_path / "one" / "t.flac").write_bytes(b"first")
    (tmp_path / "two" / "t.flac").write_bytes(b"second")
    (tmp_path / "music").symlink_to(tmp_path / "one")
    origin = LocalOrigin("o", tmp_path / "music")
    assert run(origin.read, "t.flac", 0, 10) == b"first"
    (tmp_path / "music").unlink()
    (tmp_path / "music").symlink_to(tmp_path / "two")
    run(origin.check)  # the health check (and every listing) resolves the root anew
    assert run(origin.read, "t.flac", 0, 10) == b"second"


def test_directory_loops_terminate(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "t.mp3").write_bytes(b"x")
    (tmp_path / "d" / "loop").symlink_to(tmp_path / "d")
    paths = [e.path for e in run(LocalOrigin("o", tmp_path).list).entries]
    assert paths == ["d/t.mp3"]


def test_unreadable_folder_is_reported_as_a_gap(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.mp3").write_bytes(b"x")
    (tmp_path / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path):
        if str(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listing = run(LocalOrigin("o", tmp_path).list)
    assert [e.path for e in listing.entries] == ["ok/a.mp3"]
    assert listing.gaps == ("locked",)


def test_missing_root_fails_the_listing(tmp_path: Path) -> None:
    with pytest.raises(OriginError) as info:
        run(LocalOrigin("o", tmp_path / "gone").list)
    assert info.value.errno == errno.ENOENT
    with pytest.raises(OriginError):
        run(LocalOrigin("o", tmp_path / "gone").check)


def test_non_utf8_names_round_trip(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.mp3")
    with open(raw, "wb") as f:
        f.write(b"bytes")
    origin = LocalOrigin("o", tmp_path)
    (entry,) = run(origin.list).entries
    assert run(origin.read, entry.path, 0, 5) == b"bytes"
