"""Layer 2: a real ``musicfs mount`` process on a real FUSE mount."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from musicfs.service.mounts import find_mount
from tests.support.daemon import MountedDaemon, mounted_files, musicfs_cmd, scan, wait_for_files
from tests.support.library import make_library, sha256


@pytest.fixture
def library(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    make_library(lib, albums=4, tracks=5, pad_to=300_000)
    (lib / "notes.txt").write_text("not audio")
    (lib / "broken.mp3").write_bytes(b"garbage tags")
    return lib


def origin_files(lib: Path) -> dict[str, str]:
    return {sha256(p): str(p) for p in lib.rglob("*") if p.is_file() and p.suffix != ".txt"}


def test_every_track_once_with_identical_bytes(tmp_path: Path, library: Path) -> None:
    scan(library, tmp_path / "state")
    with MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state") as d:
        files = mounted_files(d.mountpoint)
        assert len(files) == 21
        assert sorted(sha256(p) for p in files) == sorted(origin_files(library))
        # the tools people use
        for cmd in (["ls", "-lR"], ["find", ".", "-type", "f"], ["du", "-s"]):
            subprocess.run(cmd, cwd=d.mountpoint, check=True, capture_output=True, timeout=30)
        st = os.stat(files[0])
        assert st.st_size == os.stat(origin_files(library)[sha256(files[0])]).st_size
        subprocess.run(
            ["cp", "-r", str(d.mountpoint), str(tmp_path / "copy")], check=True, timeout=60
        )
        assert sorted(sha256(p) for p in (tmp_path / "copy").rglob("*") if p.is_file()) == sorted(
            origin_files(library)
        )


def test_writes_fail_with_erofs(tmp_path: Path, library: Path) -> None:
    scan(library, tmp_path / "state")
    with MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state") as d:
        target = mounted_files(d.mountpoint)[0]
        folder = target.parent
        attempts = [
            lambda: open(target, "r+b"),
            lambda: open(target, "ab"),
            lambda: open(folder / "new.flac", "wb"),
            lambda: os.mkdir(folder / "sub"),
            lambda: os.unlink(target),
            lambda: os.rename(target, folder / "x.flac"),
            lambda: os.chmod(target, 0o777),
            lambda: os.symlink("x", folder / "link"),
            lambda: os.truncate(target, 0),
            lambda: os.rmdir(folder),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as info:
                attempt()
            assert info.value.errno == errno.EROFS


def test_close_costs_no_request_once_flush_is_declined(tmp_path: Path, library: Path) -> None:
    """Read-only, so FLUSH has nothing to do: the first one answers ENOSYS and the kernel
    sends no more, close(2) succeeds and costs no round trip through the daemon."""
    scan(library, tmp_path / "state")
    with MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state") as d:
        files = mounted_files(d.mountpoint)
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            os.read(fd, 4096)
            os.close(fd)  # would raise if the kernel passed ENOSYS on
        requests = d.status()["fuse"]["requests"]
        assert requests["open"] >= len(files) == 21
        assert requests.get("flush", 0) <= 1, requests


def test_df_does_not_show_the_mount_full(tmp_path: Path, library: Path) -> None:
    """Disk-full monitors and desktop warnings read `df`: the mount reports the cache
    disk's free space as free, never 100% used."""
    scan(library, tmp_path / "state")
    with MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state") as d:
        out = subprocess.run(
            ["df", "--output=pcent,ipcent,avail", str(d.mountpoint)],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split("\n")[1]
        pcent, ipcent, avail = out.split()
        assert pcent != "100%" and ipcent != "100%" and int(avail) > 0, out


def test_xattrs_cost_one_request_then_none(tmp_path: Path, library: Path) -> None:
    """`ls -l` asks for extended attributes of every file: after the first ENOSYS the
    kernel answers them itself (EOPNOTSUPP) without asking the daemon."""
    scan(library, tmp_path / "state")
    with MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state") as d:
        files = mounted_files(d.mountpoint)
        for path in files:
            with pytest.raises(OSError) as got:
                os.getxattr(path, "user.x")
            with pytest.raises(OSError) as listed:
                os.listxattr(path)
            assert got.value.errno == listed.value.errno == errno.EOPNOTSUPP
        subprocess.run(["ls", "-lR"], cwd=d.mountpoint, check=True, capture_output=True)
        requests = d.status()["fuse"]["requests"]
        assert requests.get("getxattr", 0) <= 1 and requests.get("listxattr", 0) <= 1, requests


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signals_unmount_and_exit_0(tmp_path: Path, library: Path, signum: int) -> None:
    d = MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state").start()
    try:
        d.signal(signum)
        assert d.wait(timeout=15) == 0
        assert find_mount(d.mountpoint) is None
        assert "unmounted" in d.log()
    finally:
        d.stop()


def test_inodes_stable_across_remount(tmp_path: Path, library: Path) -> None:
    scan(library, tmp_path / "state")

    def inodes() -> dict[str, int]:
        with MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state") as d:
            return {
                str(p.relative_to(d.mountpoint)): p.stat().st_ino for p in d.mountpoint.rglob("*")
            }

    first = inodes()
    assert len(first) > 21
    assert inodes() == first


def test_daemon_scans_on_start_without_a_prior_scan(tmp_path: Path, library: Path) -> None:
    with MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state") as d:
        d.wait_for_log("tree: generation")
        assert len(mounted_files(d.mountpoint)) == 21


def refused_mount(library: Path, state: Path, mountpoint: Path) -> str:
    """Run a second ``musicfs mount`` that must be refused (exit 2); its stderr."""
    proc = subprocess.run(
        [
            *musicfs_cmd("mount", "--origin", str(library), "--state-dir", str(state)),
            str(mountpoint),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2, proc.stderr
    return proc.stderr


def test_second_daemon_on_same_state_dir_is_refused(tmp_path: Path, library: Path) -> None:
    with MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state"):
        (tmp_path / "mnt2").mkdir()
        stderr = refused_mount(library, tmp_path / "state", tmp_path / "mnt2")
        assert "another MusicFS" in stderr


def test_a_read_only_state_dir_is_refused_with_the_reason(tmp_path: Path, library: Path) -> None:
    """A failing disk remounted read-only: exit 2, naming the directory and the errno."""
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(state)], check=True)
    try:
        (tmp_path / "mnt").mkdir()
        stderr = refused_mount(library, state, tmp_path / "mnt")
        assert f"state directory {state} is not writable (EROFS" in stderr
        assert find_mount(tmp_path / "mnt") is None
    finally:
        subprocess.run(["umount", str(state)], check=True)


def test_mounting_over_a_live_mount_is_refused(tmp_path: Path, library: Path) -> None:
    with MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state"):
        stderr = refused_mount(library, tmp_path / "state2", tmp_path / "mnt")
        assert "already a MusicFS mount" in stderr


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "musicfs", "--version"], capture_output=True, text=True, check=True
    )
    assert proc.stdout.startswith("musicfs ")


def test_an_unmounted_library_disk_empties_nothing(tmp_path: Path) -> None:
    """The disk holding a local origin goes away under a running daemon; its empty mount
    point lists fine. The tree keeps every track, status says why, and the disk coming back
    needs nothing."""
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=2)
    config = tmp_path / "musicfs.toml"
    config.write_text('[library]\nscan_interval = "1s"\n')
    with MountedDaemon(tmp_path / "mnt", [lib], tmp_path / "state", config=config) as d:
        before = wait_for_files(d.mountpoint, 4, timeout=30)  # published by the first sync
        assert len(before) == 4
        away = tmp_path / "away"
        lib.rename(away)
        lib.mkdir()  # the mount point, without the disk
        d.wait_for_log("not removing 4 tracks")
        time.sleep(1.5)  # another sync or two
        assert mounted_files(d.mountpoint) == before
        errors = d.status()["sync"]["errors"]
        assert "4 tracks kept" in errors["local"] and "--prune" in errors["local"]
        lib.rmdir()
        away.rename(lib)  # the disk is back
        deadline = time.monotonic() + 90
        while d.status()["sync"]["errors"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert d.status()["sync"]["errors"] == {}
        assert [sha256(p) for p in mounted_files(d.mountpoint)] == [sha256(p) for p in before]


def mount_refused(args: list[str], mountpoint: Path) -> subprocess.CompletedProcess[str]:
    mountpoint.mkdir(exist_ok=True)
    return subprocess.run(
        [*musicfs_cmd("mount", *args), str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_first_run_with_a_wrong_origin_is_a_config_error(tmp_path: Path, kind: str) -> None:
    origin = tmp_path / "Musci"  # a typo
    if kind == "file":
        origin.write_bytes(b"not a folder")
    state = tmp_path / "state"
    proc = mount_refused(["--origin", str(origin), "--state-dir", str(state)], tmp_path / "mnt")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    code = "ENOENT" if kind == "missing" else "ENOTDIR"
    assert str(origin) in lines[0] and f"({code})" in lines[0], lines[0]
    assert find_mount(tmp_path / "mnt") is None
    assert not state.exists()  # nothing created for a command that was refused


def test_an_origin_gone_after_the_first_scan_is_offline_not_an_error(
    tmp_path: Path, library: Path
) -> None:
    scan(library, tmp_path / "state")
    library.rename(tmp_path / "elsewhere")  # a disk not mounted today
    with MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state") as d:
        assert len(mounted_files(d.mountpoint)) == 21  # the catalog's tree, served offline
        deadline = time.monotonic() + 20
        while d.status()["mode"] == "online" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert d.status()["mode"] in ("degraded", "offline")  # its health checks fail


def test_a_rejected_mount_point_creates_no_state_and_closes_nothing(
    tmp_path: Path, library: Path
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (mnt / "something.txt").write_text("not empty")
    state = tmp_path / "state"
    proc = mount_refused(["--origin", str(library), "--state-dir", str(state)], mnt)
    assert proc.returncode == 2, proc.stderr
    assert "not empty" in proc.stderr or "empty" in proc.stderr, proc.stderr
    assert "stores committed and closed" not in proc.stderr
    assert not state.exists()


def test_switching_origins_leaves_no_ghost_tracks(tmp_path: Path) -> None:
    """Mount one folder, stop, mount another with the same state dir: only the second
    library is in the tree (no EIO-ing tracks of the first); a typo'd folder is refused."""
    first, second = tmp_path / "first", tmp_path / "second"
    make_library(first, albums=3, tracks=4)
    make_library(second / "other", albums=1, tracks=3)  # no track in common
    state = tmp_path / "state"
    with MountedDaemon(tmp_path / "mnt", [first], state) as d:
        assert len(wait_for_files(d.mountpoint, 12, 30)) == 12
    with MountedDaemon(tmp_path / "mnt", [second], state) as d:

        def listing() -> list[Path]:
            try:
                return mounted_files(d.mountpoint)
            except FileNotFoundError:  # a folder of the old tree went while walking it
                return []

        deadline = time.monotonic() + 30
        files = listing()
        while len(files) != 3 and time.monotonic() < deadline:
            time.sleep(0.2)
            files = listing()
        assert len(files) == 3, [str(p) for p in files]
        for path in files:
            path.read_bytes()  # every track listed plays
        assert "not removing" not in d.log() and f"is now file://{second}" in d.log()
    proc = mount_refused(
        ["--origin", str(tmp_path / "secnod"), "--state-dir", str(state)], tmp_path / "mnt"
    )
    assert proc.returncode == 2, proc.stderr
    assert "(ENOENT)" in proc.stderr and "nothing is catalogued from there" in proc.stderr


def test_state_and_cache_are_owner_only(tmp_path: Path, library: Path) -> None:
    """Run by hand with a 022 umask: the catalog (and its WAL), the search index, the
    cache index and chunks are still not readable by other users."""
    import stat

    state, cache = tmp_path / "state", tmp_path / "cache"
    cache.mkdir(mode=0o755)  # made by the user beforehand: closed to others at start
    os.chmod(cache, 0o755)
    old = os.umask(0o022)
    try:
        with MountedDaemon(tmp_path / "mnt", [library], state, cache_dir=cache) as d:
            d.wait_for_log("search index: +")
            for f in mounted_files(d.mountpoint)[:3]:
                f.read_bytes()  # chunks in the cache
            deadline = time.monotonic() + 20  # chunks are written behind the reads
            while not any(p.is_file() for p in (cache / "chunks").rglob("*")):
                assert time.monotonic() < deadline, "no chunk was stored"
                time.sleep(0.1)
            made = [p for root in (state, cache) for p in [root, *root.rglob("*")]]
            assert (state / "catalog.sqlite-wal").exists() and (state / "search").is_dir()
            open_to_others = {
                str(p): oct(stat.S_IMODE(p.lstat().st_mode))
                for p in made
                if not p.is_symlink() and not p.is_socket() and p.lstat().st_mode & 0o077
            }
            assert open_to_others == {}
    finally:
        os.umask(old)


def test_a_catalog_with_nothing_from_a_missing_origin_still_refuses_it(tmp_path: Path) -> None:
    """`musicfs scan` with a typo made a catalog but listed nothing from that folder: the
    mount that follows is still a configuration error, not an offline library."""
    origin, state = tmp_path / "Musci", tmp_path / "state"
    scanned = subprocess.run(
        musicfs_cmd("scan", "--origin", str(origin), "--state-dir", str(state)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert scanned.returncode != 0 and (state / "catalog.sqlite").exists()
    proc = mount_refused(["--origin", str(origin), "--state-dir", str(state)], tmp_path / "mnt")
    assert proc.returncode == 2, proc.stderr
    assert "(ENOENT)" in proc.stderr and find_mount(tmp_path / "mnt") is None
