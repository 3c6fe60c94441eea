"""Layer 2: a real daemon whose chunk cache lives on a tiny tmpfs (8 MiB) playing a library
several times larger -- crashes at every write-path failpoint, chunk files corrupted and
the cache filesystem turned read-only under a running mount. Every byte read through the
mount must equal the origin's."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.daemon import (
    MountedDaemon,
    forget_page_cache,
    mounted_files,
    musicfs_cmd,
    scan,
)
from tests.support.library import make_library, sha256

CHUNK = 1024 * 1024
MAX_SIZE = 5 * CHUNK
CONFIG = """
[library]
scan_interval = 0

[cache]
max_size = "5M"
min_free = "1M"
memory = "1M"
"""


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of our own: ENOSPC and EROFS for real, without touching the host."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "musicfs-test-cache", str(where)],
        check=True,
        timeout=30,
    )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "musicfs.toml"
    path.write_text(CONFIG)
    return path


def scanned_library(
    tmp_path: Path, albums: int, tracks: int, size: int
) -> tuple[Path, Path, dict[str, str]]:
    """A library under ``tmp_path/lib``, scanned into ``tmp_path/state``, and its files'
    sha256 by relative origin path (every one of them shows up in the mount)."""
    lib, state = tmp_path / "lib", tmp_path / "state"
    make_library(lib, albums=albums, tracks=tracks, pad_to=size)
    scan(lib, state)
    expected = {str(p.relative_to(lib)): sha256(p) for p in lib.rglob("*") if p.is_file()}
    return lib, state, expected


def read_all_exact(mnt: Path, expected: dict[str, str]) -> None:
    files = mounted_files(mnt)
    assert len(files) == len(expected)
    for path in files:
        forget_page_cache(path)
    assert sorted(sha256(p) for p in files) == sorted(expected.values())


def chunk_files(cache: Path) -> list[Path]:
    chunks = cache / "chunks"
    return sorted(p for p in chunks.rglob("*") if p.is_file()) if chunks.exists() else []


def chunk_bytes(cache: Path) -> int:
    total = 0
    for path in chunk_files(cache):
        with contextlib.suppress(FileNotFoundError):  # evicted between listing and stat
            total += path.stat().st_size
    return total


def wait_until_stored(cache: Path, timeout: float = 20.0) -> None:
    """Write-behind: wait until the chunk files stop changing."""
    deadline = time.monotonic() + timeout
    last: list[Path] = []
    while time.monotonic() < deadline:
        now = chunk_files(cache)
        if now and now == last:
            return
        last = now
        time.sleep(0.5)


def fsck(state: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*musicfs_cmd("fsck", "--state-dir", str(state), "--cache-dir", str(cache)), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_tiny_cache_plays_a_library_many_times_larger(
    tmp_path: Path, tiny_tmpfs: Path, config: Path
) -> None:
    lib, state, expected = scanned_library(
        tmp_path, albums=4, tracks=5, size=2_000_000
    )  # 40 MB through 8 MiB
    cache = tiny_tmpfs / "cache"
    with MountedDaemon(tmp_path / "mnt", [lib], state, cache_dir=cache, config=config) as d:
        peak = 0
        for _ in range(2):
            for path in mounted_files(d.mountpoint):
                forget_page_cache(path)
                assert sha256(path) in expected.values()
                peak = max(peak, chunk_bytes(cache))
        wait_until_stored(cache)
        # max_size, plus at most one chunk in flight per reader (there is one here)
        assert peak <= MAX_SIZE + CHUNK + 2 * 4096, peak
        assert d.proc is not None and d.proc.poll() is None
        log = d.log()
        assert "Traceback" not in log
        assert "passthrough" not in log
    assert fsck(state, cache).returncode == 0


# Where a crash leaves something for the start-up repair to find.
WRITE_PATH = {
    "cas.put.before_write": None,
    "cas.put.after_write": "temp files left by a crash",
    "cas.put.after_fsync": "temp files left by a crash",
    "cas.put.after_rename": "re-adopted",
    "cas.put.after_dir_fsync": "re-adopted",
    "cas.put.before_commit": "re-adopted",
    "cas.index.before_commit": None,  # also fires for start-up commits: see below
    "cas.index.after_commit": None,
    "cas.put.after_commit": None,
    "cas.evict.before_unlink": None,
    "cas.evict.after_unlink": "in the index but its file is missing",
}


@pytest.mark.parametrize("point", list(WRITE_PATH))
def test_kill_at_each_write_path_failpoint_then_restart_reads_exact(
    tmp_path: Path, tiny_tmpfs: Path, config: Path, point: str
) -> None:
    lib, state, expected = scanned_library(tmp_path, albums=2, tracks=4, size=1_300_000)
    cache = tiny_tmpfs / "cache"
    # Let a few hits pass so the crash lands mid-play with a populated cache (eviction
    # needs a full one: 5 MiB of chunks first).
    skip = 7 if point.startswith("cas.evict") else 3
    crashing = MountedDaemon(
        tmp_path / "mnt-crash",
        [lib],
        state,
        cache_dir=cache,
        config=config,
        env={"MUSICFS_FAILPOINTS": f"{point}=after({skip})->exit(9)"},
    ).start()
    try:
        for path in mounted_files(crashing.mountpoint):
            try:
                forget_page_cache(path)
                assert sha256(path) in expected.values()
            except OSError:
                break  # the daemon died under us: ENOTCONN
        assert crashing.wait(timeout=30) == 9, crashing.log()
    finally:
        crashing.stop()
    with MountedDaemon(tmp_path / "mnt-after", [lib], state, cache_dir=cache, config=config) as d:
        read_all_exact(d.mountpoint, expected)
        repair = WRITE_PATH[point]
        if repair is not None:
            assert repair in d.log(), d.log()
        wait_until_stored(cache)
    result = fsck(state, cache)
    assert result.returncode == 0, result.stdout + result.stderr


def test_corrupt_chunk_files_under_a_running_mount_are_repaired(
    tmp_path: Path, tiny_tmpfs: Path, config: Path
) -> None:
    lib, state, expected = scanned_library(
        tmp_path, albums=1, tracks=3, size=1_200_000
    )  # fits the cache
    cache = tiny_tmpfs / "cache"
    with MountedDaemon(tmp_path / "mnt", [lib], state, cache_dir=cache, config=config) as d:
        read_all_exact(d.mountpoint, expected)
        wait_until_stored(cache)
        victims = chunk_files(cache)
        assert len(victims) >= 4
        for i, path in enumerate(victims):
            raw = bytearray(path.read_bytes())
            if i % 3 == 0:
                raw[len(raw) // 2] ^= 0x20  # bit flip
                path.write_bytes(bytes(raw))
            elif i % 3 == 1:
                path.write_bytes(bytes(len(raw)))  # zero-filled
            else:
                path.write_bytes(bytes(raw[: len(raw) // 3]))  # truncated
        # memory = 1M: the reader keeps one chunk in RAM, so the damage is read from disk.
        read_all_exact(d.mountpoint, expected)
        log = d.log()
        assert "corrupt" in log and "repaired" in log, log
        assert "Traceback" not in log


@pytest.fixture
def failing_ext4(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A 16 MiB ext4 on a loop device mounted ``errors=remount-ro``, and a function that
    makes it fail as a dying disk does: the kernel turns it read-only under open files.

    (tmpfs cannot do this: ``mount -o remount,ro`` is refused while the cache holds files
    open for writing -- LMDB always does -- so only a filesystem error gets us there.)
    """
    image = tmp_path / "ext4.img"
    where = tmp_path / "ext4"
    where.mkdir()
    with image.open("wb") as f:
        f.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, timeout=60)
    subprocess.run(
        ["mount", "-o", "loop,errors=remount-ro", str(image), str(where)], check=True, timeout=30
    )
    device = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE", str(where)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()

    def fail_the_disk() -> None:
        trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
        if not trigger.exists():
            pytest.fail(f"{trigger} missing: cannot make the cache filesystem fail")
        trigger.write_text("1")

    try:
        yield where, fail_the_disk
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


@pytest.mark.host_root  # a loop device for the failing ext4
def test_cache_dir_turned_read_only_under_a_running_mount_means_passthrough_serving_cached(
    tmp_path: Path, failing_ext4: tuple[Path, Callable[[], None]], config: Path
) -> None:
    lib, state, expected = scanned_library(tmp_path, albums=2, tracks=3, size=1_500_000)
    where, fail_the_disk = failing_ext4
    cache = where / "cache"
    with MountedDaemon(tmp_path / "mnt", [lib], state, cache_dir=cache, config=config) as d:
        files = mounted_files(d.mountpoint)
        played = {path: sha256(path) for path in files[:2]}  # 3 MB: fits the 5 MiB cache
        assert set(played.values()) <= set(expected.values())
        wait_until_stored(cache)
        fail_the_disk()
        with pytest.raises(OSError) as info:
            (cache / "probe").write_bytes(b"x")
        assert info.value.errno == errno.EROFS
        read_all_exact(d.mountpoint, expected)
        read_all_exact(d.mountpoint, expected)
        d.wait_for_log("passthrough mode")
        d.wait_for_log("read-only: still serving")
        assert "EROFS" in d.log()
        # The origin goes away as well: what was cached before the disk failed still
        # plays, read from the read-only cache and verified.
        lib.rename(tmp_path / "lib-gone")
        for path, digest in played.items():
            forget_page_cache(path)
            assert sha256(path) == digest
        unplayed = files[-1]
        forget_page_cache(unplayed)
        with pytest.raises(OSError), unplayed.open("rb") as f:
            f.read(4096)  # never cached: the origin really is gone
        status = d.status()["cache"]
        assert status["mode"] == "passthrough" and status["serves_cached"]
        assert status["counters"]["hits"] > 0
        assert "Traceback" not in d.log()
        assert d.proc is not None and d.proc.poll() is None


def test_cache_dir_that_is_a_file_still_mounts_and_serves_in_passthrough(
    tmp_path: Path, config: Path
) -> None:
    lib, state, expected = scanned_library(tmp_path, albums=1, tracks=3, size=1_100_000)
    cache = tmp_path / "not-a-dir"
    cache.write_text("someone's file")
    with MountedDaemon(tmp_path / "mnt", [lib], state, cache_dir=cache, config=config) as d:
        read_all_exact(d.mountpoint, expected)
        proc = subprocess.run(
            [*musicfs_cmd("status", "--state-dir", str(state)), str(d.mountpoint)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr
        assert "cache: passthrough (" in proc.stdout and "not a directory" in proc.stdout
        assert "passthrough" in proc.stdout.splitlines()[0]  # the daemon's mode says so too
    assert cache.read_text() == "someone's file"


def test_a_hung_cache_disk_stalls_the_player_once_not_on_every_chunk(
    tmp_path: Path, config: Path
) -> None:
    """The cache disk stops answering (a dying USB disk, a stale NFS mount): every chunk
    read and write on it blocks forever. The first chunk waits the store deadline (2 s)
    before the origin is asked, later ones only a quarter of a second; bytes stay exact,
    the blocked threads are bounded, and the daemon still stops on SIGTERM."""
    lib, state, expected = scanned_library(tmp_path, albums=1, tracks=2, size=1_500_000)
    cache = tmp_path / "cache"
    with MountedDaemon(tmp_path / "mnt", [lib], state, cache_dir=cache, config=config) as d:
        read_all_exact(d.mountpoint, expected)  # every chunk now cached
        wait_until_stored(cache)
    hung = "cas.get.before_read=sleep(600000);cas.put.before_write=sleep(600000)"
    d = MountedDaemon(
        tmp_path / "mnt",
        [lib],
        state,
        cache_dir=cache,
        config=config,
        env={"MUSICFS_FAILPOINTS": hung},
    ).start()
    try:
        threads_before = _threads(d)
        waits: list[float] = []
        for path in mounted_files(d.mountpoint):
            forget_page_cache(path)
            data = bytearray()
            with path.open("rb", buffering=0) as f:
                while True:
                    began = time.monotonic()
                    piece = f.read(128 * 1024)
                    waits.append(time.monotonic() - began)
                    if not piece:
                        break
                    data += piece
            assert hashlib.sha256(data).hexdigest() in expected.values()
        stalls = [w for w in waits if w > 1.0]
        assert len(stalls) == 1 and stalls[0] < 8.0, stalls  # once, within the read deadline
        assert d.log().count("asking the origin instead") == 1
        # Hung threads pile up only to the cache's limits, not one per read.
        assert _threads(d) < threads_before + 40, (threads_before, _threads(d))
        stopped = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
        assert time.monotonic() - stopped < 20
    finally:
        d.stop()


def _threads(d: MountedDaemon) -> int:
    assert d.proc is not None
    return len(os.listdir(f"/proc/{d.proc.pid}/task"))


def test_fsck_repair_beside_a_running_daemon_refuses_naming_its_pid(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    with MountedDaemon(tmp_path / "mnt", [lib], tmp_path / "state") as d:
        proc = subprocess.run(
            musicfs_cmd(
                "fsck", "--repair", "--state-dir", str(d.state_dir), "--cache-dir", str(d.cache_dir)
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.strip() == (
            f"musicfs: the daemon pid {d.pid} is using this cache ({d.cache_dir}); "
            "stop it or run fsck without --repair"
        )
        assert "passthrough" not in proc.stdout + proc.stderr
        assert "ERROR" not in d.log()  # and the daemon's cache was not touched
