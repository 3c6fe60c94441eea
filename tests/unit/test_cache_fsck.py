"""Layer 1: ``musicfs fsck [--repair]`` on a chunk cache -- verifies every chunk and the
index against the files, repairs on request, exits non-zero on what it left."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from musicfs.cache.chunkfile import HEADER_SIZE, chunk_hash
from musicfs.cache.store import ChunkStore
from musicfs.cli import main
from tests.support.daemon import musicfs_cmd
from tests.support.faulty_store import noise

CS = 4096
V = b"v" * 16


def fsck(tmp_path: Path, *extra: str) -> int:
    return main(
        [
            "fsck",
            "--state-dir",
            str(tmp_path / "state"),
            "--cache-dir",
            str(tmp_path / "cache"),
            *extra,
        ]
    )


@pytest.fixture
def cache(tmp_path: Path) -> ChunkStore:
    # The CLI reads chunk_size from the config; the default is 1 MiB, so do the same here.
    store = ChunkStore(tmp_path / "cache", min_free=0)
    assert store.open() is not None
    for i in range(6):
        store.put(V, i, noise(CS, str(i)))
    store.close()
    return store


def path_of(store: ChunkStore, i: int) -> Path:
    return store.chunk_path(chunk_hash(noise(CS, str(i))))


def test_a_sound_cache_passes(
    tmp_path: Path, cache: ChunkStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fsck(tmp_path) == 0
    out = capsys.readouterr().out
    assert "6 chunks" in out and "6 verified ok, 0 problems" in out


def test_no_cache_yet_is_not_a_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fsck(tmp_path) == 0
    assert "does not exist yet" in capsys.readouterr().out


def test_every_kind_of_damage_is_found_and_nothing_changes(
    tmp_path: Path, cache: ChunkStore, capsys: pytest.CaptureFixture[str]
) -> None:
    flipped = bytearray(path_of(cache, 0).read_bytes())
    flipped[HEADER_SIZE + 5] ^= 1
    path_of(cache, 0).write_bytes(bytes(flipped))  # bit flip: only a hash finds this
    path_of(cache, 1).unlink()  # index points at an absent file
    path_of(cache, 2).write_bytes(bytes(HEADER_SIZE + CS))  # zero-filled
    os.truncate(path_of(cache, 3), 100)  # truncated
    (cache.disk.tmp_dir / "leftover").write_bytes(b"x")
    stranger = cache.disk.chunks_dir / "ab" / ("ab" + "0" * 62)
    stranger.parent.mkdir(exist_ok=True)
    stranger.write_bytes(b"unknown")
    before = {p: p.stat().st_mtime_ns for p in cache.root.rglob("*") if p.is_file()}

    assert fsck(tmp_path) == 1
    captured = capsys.readouterr()
    err = captured.err
    assert "hash mismatch" in err
    assert "missing" in err
    assert "header is damaged" in err
    assert "file is 100 bytes" in err  # truncated
    assert "temp file left by a crash" in err
    assert "not in the index" in err
    assert "2 verified ok, 6 problems" in captured.out
    after = {p: p.stat().st_mtime_ns for p in cache.root.rglob("*") if p.is_file()}
    assert before == after  # read-only

    assert fsck(tmp_path, "--repair") == 0
    out = capsys.readouterr().out
    assert "repaired:" in out and "quarantined" in out
    assert fsck(tmp_path) == 0
    assert "2 chunks" in capsys.readouterr().out


def test_a_corrupt_index_is_reported_then_rebuilt(
    tmp_path: Path, cache: ChunkStore, capsys: pytest.CaptureFixture[str]
) -> None:
    data = cache.disk.index_path / "data.mdb"
    data.write_bytes(data.read_bytes()[: 2 * 4096])
    assert fsck(tmp_path) == 1
    assert "index" in capsys.readouterr().err
    assert fsck(tmp_path, "--repair") == 0
    assert "index rebuilt" in capsys.readouterr().out
    assert fsck(tmp_path) == 0
    assert "6 verified ok" in capsys.readouterr().out


def test_repair_refuses_a_cache_in_use(
    tmp_path: Path, cache: ChunkStore, capsys: pytest.CaptureFixture[str]
) -> None:
    running = ChunkStore(cache.root, min_free=0)
    assert running.open() is not None
    try:
        assert fsck(tmp_path, "--repair") == 2
        err = capsys.readouterr().err
        # One clear line naming who holds it, not ERROR lines about passthrough.
        assert (
            f"musicfs: the daemon pid {os.getpid()} is using this cache ({cache.root}); "
            "stop it or run fsck without --repair"
        ) in err.splitlines()
        assert "passthrough" not in err
        # ...but a read-only check next to it works (another process, as in real life:
        # LMDB refuses a second open of one environment within a process)
        proc = subprocess.run(
            [
                *musicfs_cmd("fsck", "--state-dir", str(tmp_path / "state")),
                "--cache-dir",
                str(cache.root),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert "a running MusicFS uses it" in proc.stdout
    finally:
        running.close()


def test_repair_uses_the_chunk_size_the_cache_was_written_with(
    tmp_path: Path, cache: ChunkStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chunk_size change waiting for a daemon restart must not empty the index, nor
    delete the full-size chunks the new size would not fit."""
    big = ChunkStore(cache.root, min_free=0)
    assert big.open() is not None
    for i in range(2):
        big.put(b"w" * 16, i, noise(2**20, f"big{i}"))
    big.close()
    config = tmp_path / "musicfs.toml"
    config.write_text('[cache]\nchunk_size = "512K"\n')
    args = ["--config", str(config)]
    assert fsck(tmp_path, *args, "--repair") == 0
    out = capsys.readouterr().out
    assert "written with 1048576-byte chunks" in out and "repairing with 1048576" in out
    assert "index rebuilt" not in out and "deleted" not in out, out
    assert fsck(tmp_path) == 0
    assert "8 chunks" in capsys.readouterr().out and all(
        path_of(cache, i).exists() for i in range(6)
    )


def test_a_cache_dir_that_is_a_file_is_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cache").write_text("x")
    assert fsck(tmp_path) == 1
    assert "not a directory" in capsys.readouterr().err
