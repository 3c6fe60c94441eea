"""Layer 2: coming back by itself -- kill -9 and stale mounts, a corrupt catalog, a sync
crashed mid-way, readers caught by a shutdown, and a tiny file-descriptor limit."""

from __future__ import annotations

import errno
import hashlib
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from musicfs.catalog.db import Catalog
from musicfs.service.mounts import find_mount, is_stale, probe
from tests.support.daemon import (
    MountedDaemon,
    mounted_files,
    musicfs_cmd,
    scan,
    unmount_leftovers,
    wait_for_files,
)
from tests.support.library import make_library, sha256
from tests.support.readers import Reader


@pytest.fixture(autouse=True)
def _no_leftover_mounts(tmp_path: Path) -> Iterator[None]:
    yield
    unmount_leftovers(tmp_path)


def hashes(mnt: Path) -> dict[str, str]:
    return {str(p.relative_to(mnt)): sha256(p) for p in mounted_files(mnt)}


def origin_hashes(lib: Path) -> list[str]:
    return sorted(sha256(p) for p in lib.rglob("*") if p.is_file())


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_kill_9_leaves_a_stale_mount_that_the_next_start_cleans(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=3, pad_to=500_000)
    d = MountedDaemon(tmp_path / "mnt", [lib], tmp_path / "state").start()
    try:
        d.wait_for_log("tree: generation")
        before = hashes(d.mountpoint)
        assert sorted(before.values()) == origin_hashes(lib)
        d.proc.kill()  # type: ignore[union-attr]
        d.wait(timeout=10)
        # What a killed FUSE daemon leaves: still listed, answering ENOTCONN.
        assert find_mount(d.mountpoint) is not None
        assert probe(d.mountpoint, 5) == errno.ENOTCONN
    finally:
        d._log.close()
    with MountedDaemon(tmp_path / "mnt", [lib], tmp_path / "state") as d2:
        assert "stale MusicFS mount left by a daemon that died" in d2.log()
        assert hashes(d2.mountpoint) == before
    assert find_mount(tmp_path / "mnt") is None


def test_a_live_mount_of_another_instance_is_refused(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    with MountedDaemon(tmp_path / "mnt", [lib], tmp_path / "state") as d:
        proc = subprocess.run(
            musicfs_cmd(
                "mount",
                "--origin",
                str(lib),
                "--state-dir",
                str(tmp_path / "other"),
                str(d.mountpoint),
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 2
        assert "served by a running daemon" in proc.stderr
        assert len(mounted_files(d.mountpoint)) == 2  # the running one is untouched


def corrupt_pages(path: Path, first_page: int, pages: int, page_size: int = 4096) -> None:
    with path.open("r+b") as f:
        f.seek(first_page * page_size)
        f.write(bytes((i * 37 + 11) % 256 for i in range(pages * page_size)))


def test_corrupt_catalog_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=4, tracks=5)
    state = tmp_path / "state"
    scan(lib, state)
    catalog = state / "catalog.sqlite"
    assert catalog.stat().st_size > 4 * 4096
    corrupt_pages(catalog, 1, 3)
    with MountedDaemon(tmp_path / "mnt", [lib], state) as d:
        d.wait_for_log("tree: generation")
        assert "is unusable" in d.log() and "rebuilding it from the origins" in d.log()
        assert sorted(hashes(d.mountpoint).values()) == origin_hashes(lib)
    moved = [p.name for p in state.glob("catalog.sqlite.corrupt-*")]
    assert len([m for m in moved if m[-1].isdigit()]) == 1, moved  # (+ its -wal/-shm)
    assert Catalog(catalog).check(full=True) == []


def test_corrupt_catalog_with_the_origin_down_still_serves_the_cache(tmp_path: Path) -> None:
    """A damaged catalog is rebuilt from the origins -- but with the origin unreachable the
    rows salvaged from the damaged file keep the library listed and the cache serves it."""
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=5, pad_to=300_000)
    state = tmp_path / "state"
    with MountedDaemon(tmp_path / "mnt", [lib], state) as d:
        d.wait_for_log("tree: generation")
        before = hashes(d.mountpoint)  # every byte read once: the cache holds it all
    catalog = state / "catalog.sqlite"
    db = apsw.Connection(str(catalog))
    (page,) = db.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'sources_by_origin'"
    ).fetchone()
    db.close()
    corrupt_pages(catalog, int(page) - 1, 1)
    lib.rename(tmp_path / "lib-unreachable")
    with MountedDaemon(tmp_path / "mnt", [lib], state) as d2:
        assert "is unusable" in d2.log() and "salvaged 10 tracks" in d2.log()
        assert hashes(d2.mountpoint) == before  # same names, same bytes, origin gone
    (tmp_path / "lib-unreachable").rename(lib)


def test_garbage_catalog_file_is_replaced_too(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=3)
    state = tmp_path / "state"
    state.mkdir()
    (state / "catalog.sqlite").write_bytes(b"this is not a database" * 500)
    with MountedDaemon(tmp_path / "mnt", [lib], state) as d:
        d.wait_for_log("tree: generation")
        assert len(mounted_files(d.mountpoint)) == 3


def test_a_newer_catalog_schema_is_refused_clearly(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=1)
    state = tmp_path / "state"
    Catalog(state / "catalog.sqlite").close()
    db = apsw.Connection(str(state / "catalog.sqlite"))
    db.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    db.close()
    (tmp_path / "mnt").mkdir()
    proc = subprocess.run(
        musicfs_cmd(
            "mount", "--origin", str(lib), "--state-dir", str(state), str(tmp_path / "mnt")
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "schema version 99 is newer than this MusicFS understands" in proc.stderr
    assert find_mount(tmp_path / "mnt") is None
    assert not list(state.glob("catalog.sqlite.corrupt-*"))  # refused, not thrown away


def test_sync_crashed_mid_way_resumes_without_duplicates_or_a_rescan(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=6, tracks=10)  # 60 files, 6 batches of 10
    config = write_config(tmp_path, "[library]\nscan_batch = 10\n")
    state = tmp_path / "state"
    d = MountedDaemon(
        tmp_path / "mnt",
        [lib],
        state,
        config=config,
        env={"MUSICFS_FAILPOINTS": "sync.after_batch=after(2)->exit(77)"},
    ).start(wait=False)
    try:
        assert d.wait(timeout=60) == 77  # died right after committing its third batch
    finally:
        d._log.close()
    catalog = Catalog(state / "catalog.sqlite")
    assert catalog.track_count() == 30
    catalog.close()
    assert is_stale(tmp_path / "mnt")
    with MountedDaemon(tmp_path / "mnt", [lib], state, config=config) as d2:
        d2.wait_for_log("sync: origin=local")
        line = next(x for x in d2.log().splitlines() if "sync: origin=local" in x)
        assert "listed=60 scanned=30 " in line  # only what the crash left unscanned
        d2.wait_for_log("tree: generation")
        assert sorted(hashes(d2.mountpoint).values()) == origin_hashes(lib)
    catalog = Catalog(state / "catalog.sqlite")
    assert catalog.track_count() == 60
    assert catalog.db.execute("SELECT count(*) FROM sources").fetchone()[0] == 60
    catalog.close()


def test_sigterm_with_20_readers_mid_file(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=4, tracks=5, pad_to=3_000_000)
    originals = {sha256(p): p.read_bytes() for p in lib.rglob("*") if p.is_file()}
    # Small chunks: every 64 KiB piece is its own (slow) origin fetch.
    config = write_config(tmp_path, '[fuse]\ndrain_timeout = "2s"\n[cache]\nchunk_size = "64K"\n')
    d = MountedDaemon(
        tmp_path / "mnt",
        [lib],
        tmp_path / "state",
        config=config,
        # Slow origin reads keep all 20 readers mid-file when the signal comes.
        env={"MUSICFS_FAILPOINTS": "origin.local.read=sleep(40)"},
    ).start()
    try:
        d.wait_for_log("tree: generation")
        files = mounted_files(d.mountpoint)
        assert len(files) == 20
        sizes = {str(p): p.stat().st_size for p in files}
        readers = [Reader(p) for p in files]
        for r in readers:
            r.start()
        deadline = time.monotonic() + 30
        while min(len(r.data) for r in readers) < 64 * 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(0 < len(r.data) < sizes[str(r.path)] for r in readers), "not mid-file"
        sent = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=30) == 0
        for r in readers:
            r.join(15)
            assert not r.is_alive(), f"{r.path} still hangs"
            assert r.finished_at is not None
            # Nobody waits much past the drain timeout (2 s) for an answer.
            assert r.finished_at - sent < 2 + 6, r.finished_at - sent
            complete = len(r.data) == sizes[str(r.path)]
            # data or EIO from the daemon; a read issued after it exited gets ENOTCONN
            # from the kernel (no daemon left to answer), never a hang.
            assert complete or r.error in (errno.EIO, errno.ENOTCONN, errno.ECONNABORTED)
            # Whatever arrived is the right bytes.
            assert any(o.startswith(bytes(r.data)) for o in originals.values())
        errors = [r.error for r in readers if r.error is not None]
        assert errors.count(errno.EIO) >= len(errors) // 2, errors
        assert find_mount(d.mountpoint) is None
    finally:
        d.stop()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("nofile", [64, 26])
def test_rlimit_nofile_64_survives_100_parallel_readers(tmp_path: Path, nofile: int) -> None:
    """64 as the issue asks (the daemon needs about 22 descriptors, so that is headroom);
    26 leaves it a handful, so syncing and reading really run into EMFILE. No RAM cache
    and 64 KiB chunks: every read opens a chunk file or the origin file."""
    lib = tmp_path / "lib"
    make_library(lib, albums=5, tracks=4, pad_to=400_000)
    originals = {sha256(p) for p in lib.rglob("*") if p.is_file()}
    config = write_config(
        tmp_path,
        '[cache]\nmemory = 0\nchunk_size = "64K"\n[library]\nscan_interval = "1s"\n',
    )
    d = MountedDaemon(
        tmp_path / "mnt", [lib], tmp_path / "state", config=config, nofile=nofile
    ).start()
    try:
        # Files the first sync could not open for want of descriptors are retried soon.
        files = wait_for_files(d.mountpoint, 20, timeout=60)
        assert len(files) == 20
        # ... and a shortage is never recorded as a file's broken tags. (The search index
        # may not manage with so few descriptors; it logs that and serving goes on.)
        time.sleep(1.5)  # background work settles: a fair descriptor baseline
        catalog = Catalog(tmp_path / "state" / "catalog.sqlite")
        errors = [t.tag_error for t in catalog.tracks() if t.tag_error]
        catalog.close()
        assert not [e for e in errors if "Error" in e and "Header" not in e], errors
        baseline = d.open_fds()
        results: list[str | int] = []
        lock = threading.Lock()

        def read(p: Path) -> None:
            # O_DIRECT: every piece reaches the daemon, none comes from the page cache.
            r = Reader(p, block=128 * 1024)
            r.run()
            out = r.error if r.error is not None else hashlib.sha256(r.data).hexdigest()
            with lock:
                results.append(out)

        rounds = 3
        for _ in range(rounds):
            threads = [threading.Thread(target=read, args=(files[i % 20],)) for i in range(100)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not any(t.is_alive() for t in threads)
        assert d.proc is not None and d.proc.poll() is None, "daemon died"
        assert len(results) == 100 * rounds
        assert {r for r in results if isinstance(r, str)} <= originals  # never wrong bytes
        assert {r for r in results if isinstance(r, int)} <= {errno.EIO}
        if nofile < 30:
            assert "Too many open files" in d.log() or "EMFILE" in d.log()
        # Still serving, and nothing leaked.
        assert sorted(sha256(p) for p in files) == sorted(originals)
        assert d.open_fds() <= baseline + 2, (baseline, d.open_fds())
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=20) == 0
    finally:
        d.stop()


@pytest.mark.timeout(180)
def test_memory_pressure_costs_reads_an_eio_and_serving_resumes(tmp_path: Path) -> None:
    """The daemon's address space is capped (RLIMIT_AS, soft, set from outside with
    prlimit) to what it uses while 60 players start at once; every read is
    slowed by a failpoint so that pyfuse3 needs many workers, each of which must allocate
    a 1 MiB request buffer. Threads, chunk buffers and those request buffers cannot be
    had: reads answer EIO (or correct bytes), pyfuse3's worker loop fails with ENOMEM
    and is restarted, and when the pressure passes everything plays again -- no crash,
    no hung reader, no dead mount."""
    lib = tmp_path / "lib"
    make_library(lib, albums=5, tracks=4, pad_to=2_000_000)
    originals = {sha256(p) for p in lib.rglob("*") if p.is_file()}
    d = MountedDaemon(
        tmp_path / "mnt",
        [lib],
        tmp_path / "state",
        env={"MUSICFS_FAILPOINTS": "fuse.read=sleep(100)"},
    ).start()
    try:
        files = wait_for_files(d.mountpoint, 20, timeout=30)
        assert len(files) == 20
        time.sleep(1.0)  # start-up sync and search indexing settle
        assert d.proc is not None
        pid = d.proc.pid
        # Whether one of pyfuse3's new workers is among the allocations that fail depends
        # on timing; up to five waves of pressure make it all but certain, and every
        # wave must keep the other promises.
        for _wave in range(5):
            resource.prlimit(pid, resource.RLIMIT_AS, (_vm_size(pid), resource.RLIM_INFINITY))
            readers = [Reader(p, block=128 * 1024) for p in files * 3]
            for r in readers:
                r.start()
            time.sleep(3.0)  # the pressure lasts a few seconds, then passes
            unlimited = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            resource.prlimit(pid, resource.RLIMIT_AS, unlimited)
            until = time.monotonic() + 60
            for r in readers:
                r.join(max(0.0, until - time.monotonic()))
            assert not [r for r in readers if r.is_alive()], "a reader hung"
            assert d.proc.poll() is None, f"daemon died:\n{d.log()}"
            outcomes = [
                r.error if r.error is not None else hashlib.sha256(r.data).hexdigest()
                for r in readers
            ]
            assert {o for o in outcomes if isinstance(o, str)} <= originals  # never wrong bytes
            assert {o for o in outcomes if isinstance(o, int)} <= {errno.EIO}
            assert errno.EIO in outcomes, "the cap caused no failure: the test proves nothing"
            if "FUSE workers restarted" in d.log():
                break
        log_text = d.log()
        assert "out of memory" in log_text
        assert "FUSE workers restarted" in log_text  # pyfuse3's own loop hit ENOMEM too
        assert d.status()["fuse"]["worker_restarts"] >= 1
        assert "Traceback" not in log_text
        # The pressure is gone: every track plays, through the same mount.
        after = [Reader(p, block=128 * 1024) for p in files]
        for r in after:
            r.start()
        for r in after:
            r.join(60)
        assert [r.error for r in after] == [None] * 20
        assert sorted(hashlib.sha256(r.data).hexdigest() for r in after) == sorted(originals)
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=20) == 0
    finally:
        d.stop()


def _vm_size(pid: int) -> int:
    """The process's address space in bytes (VmSize in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize")
