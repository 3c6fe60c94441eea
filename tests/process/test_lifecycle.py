"""Layer 2: the daemon's lifecycle on a real mount -- signals, ordered shutdown, forced
exit, sd_notify and the watchdog, seen from outside the process."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from musicfs.catalog.integrity import check_catalog
from musicfs.service.mounts import find_mount, is_stale
from tests.support.daemon import MountedDaemon, mounted_files, musicfs_cmd, unmount_leftovers
from tests.support.library import make_library, sha256
from tests.support.readers import Reader


@pytest.fixture(autouse=True)
def _no_leftover_mounts(tmp_path: Path) -> Iterator[None]:
    yield
    unmount_leftovers(tmp_path)


@pytest.fixture
def library(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=4, pad_to=2_000_000)
    return lib


def write_config(tmp_path: Path, **tables: dict[str, object]) -> Path:
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            lines.append(f"{key} = {value!r}".replace("'", '"'))
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class NotifyCapture:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                return [m for _, m in self.messages]
            self.messages.append((time.monotonic(), data.decode()))

    def wait_for(self, field: str, timeout: float = 20.0) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            for at, message in self.messages:
                if field in message.splitlines():
                    return at
        raise AssertionError(f"{field} not received within {timeout}s: {self.messages}")

    def fields(self) -> list[str]:
        return [line for _, m in self.messages for line in m.splitlines()]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyCapture]:
    capture = NotifyCapture(tmp_path / "notify.sock")
    yield capture
    capture.close()


def shutdown_lines(log: str) -> list[str]:
    marks = [
        "shutting down",
        "shutdown: stopping background work",
        "shutdown: drained",
        "shutdown: stores committed and closed",
        "unmounted",
    ]
    found = []
    for line in log.splitlines():
        for mark in marks:
            if mark in line:
                found.append(mark)
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_in_order_and_exits_0(tmp_path: Path, library: Path, signum: int) -> None:
    d = MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state").start()
    try:
        d.wait_for_log("tree: generation")
        files = mounted_files(d.mountpoint)
        assert len(files) == 8
        sha256(files[0])  # some traffic before the signal
        d.signal(signum)
        assert d.wait(timeout=20) == 0
        assert find_mount(d.mountpoint) is None and not is_stale(d.mountpoint)
        assert "Traceback" not in d.log() and "crashed" not in d.log()
        assert shutdown_lines(d.log()) == [
            "shutting down",
            "shutdown: stopping background work",
            "shutdown: drained",
            "shutdown: stores committed and closed",
            "unmounted",
        ]
        # The catalog is consistent and complete; the state lock was released.
        assert check_catalog(tmp_path / "state" / "catalog.sqlite") == []
        import fcntl

        with open(tmp_path / "state" / "musicfs.lock", "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Catalog (full integrity_check) and every cached chunk verify.
        fsck = subprocess.run(
            musicfs_cmd("fsck", "--state-dir", str(d.state_dir), "--cache-dir", str(d.cache_dir)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert "0 problems" in fsck.stdout
    finally:
        d.stop()
    # Committed before the signal, still there after it: a restart serves the same bytes
    # without scanning anything again, and finds the search index it committed current.
    earlier = len(d.log())
    with MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state") as d2:
        assert len(mounted_files(d2.mountpoint)) == 8
        deadline = time.monotonic() + 20
        while "search index: +" not in d2.log()[earlier:] and time.monotonic() < deadline:
            time.sleep(0.05)
        second_run = d2.log()[earlier:]
        assert "scanned=0" in second_run
        search_line = next(x for x in second_run.splitlines() if "search index: +" in x)
        assert "+0 -0, 8 tracks" in search_line and "rebuilt" not in search_line


def test_second_signal_during_the_drain_forces_a_prompt_exit(tmp_path: Path, library: Path) -> None:
    config = write_config(tmp_path, fuse={"drain_timeout": "60s", "read_deadline": "60s"})
    d = MountedDaemon(
        tmp_path / "mnt",
        [library],
        tmp_path / "state",
        config=config,
        env={"MUSICFS_FAILPOINTS": "fuse.read=sleep(120000)"},
    ).start()
    try:
        d.wait_for_log("tree: generation")
        reader = Reader(mounted_files(d.mountpoint)[0])
        reader.start()
        reader.started_reading.wait(5)
        time.sleep(0.3)
        d.signal(signal.SIGTERM)
        d.wait_for_log("shutdown: stopping background work")
        time.sleep(0.3)
        assert d.proc is not None and d.proc.poll() is None  # still draining (60 s)
        sent = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=10) == 3
        assert time.monotonic() - sent < 5
        assert find_mount(d.mountpoint) is None
        reader.join(10)
        assert not reader.is_alive(), "a reader still hangs after the forced exit"
        assert reader.error is not None
        assert "unmounting at once" in d.log()
    finally:
        d.stop()


def test_notify_socket_sees_ready_watchdog_stopping_in_order(
    tmp_path: Path, library: Path, notify: NotifyCapture
) -> None:
    d = MountedDaemon(
        tmp_path / "mnt",
        [library],
        tmp_path / "state",
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "600000"},
    ).start()
    try:
        notify.wait_for("READY=1")
        # READY means the mount answers, not merely that it is listed.
        assert os.listdir(d.mountpoint) is not None
        deadline = time.monotonic() + 10
        while notify.fields().count("WATCHDOG=1") < 3 and time.monotonic() < deadline:
            notify.drain()
        notify.wait_for("STATUS=serving; online; 8 tracks; cache 0 MiB")
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=20) == 0
        notify.drain()
    finally:
        d.stop()
    fields = notify.fields()
    assert fields.count("READY=1") == 1
    ready, stopping = fields.index("READY=1"), fields.index("STOPPING=1")
    pings = [i for i, f in enumerate(fields) if f == "WATCHDOG=1"]
    assert len(pings) >= 3
    assert ready < pings[0] and pings[-1] < stopping
    assert f"MAINPID={d.proc.pid}" in fields  # type: ignore[union-attr]
    assert "STATUS=stopping: draining requests" in fields[stopping:]


def test_wedged_worker_pool_stops_the_watchdog_pings(
    tmp_path: Path, library: Path, notify: NotifyCapture
) -> None:
    config = write_config(
        tmp_path, fuse={"max_tasks": 2, "drain_timeout": "1s", "read_deadline": "60s"}
    )
    d = MountedDaemon(
        tmp_path / "mnt",
        [library],
        tmp_path / "state",
        config=config,
        env={
            "NOTIFY_SOCKET": str(notify.path),
            "WATCHDOG_USEC": "600000",
            # Every read blocks for 2 minutes, deadline or not: the pool wedges.
            "MUSICFS_FAILPOINTS": "fuse.read=sleep(120000)",
        },
    ).start()
    readers: list[Reader] = []
    try:
        notify.wait_for("READY=1")
        d.wait_for_log("tree: generation")
        files = mounted_files(d.mountpoint)
        deadline = time.monotonic() + 10
        while notify.fields().count("WATCHDOG=1") < 2 and time.monotonic() < deadline:
            notify.drain()
        assert notify.fields().count("WATCHDOG=1") >= 2  # healthy: pinging
        readers = [Reader(p) for p in files[:4]]
        for r in readers:
            r.start()
        d.wait_for_log("not pinging systemd", timeout=15)
        notify.drain()
        before = notify.fields().count("WATCHDOG=1")
        time.sleep(2.0)  # more than three ping intervals
        notify.drain()
        assert notify.fields().count("WATCHDOG=1") == before, "pinged while wedged"
        # A wedged daemon still shuts down: the drain timeout cuts the reads off with EIO.
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=20) == 0
        for r in readers:
            r.join(10)
            assert not r.is_alive()
            assert r.error in (errno.EIO, errno.ENOTCONN, errno.ECONNABORTED), r.error
    finally:
        d.stop()


def test_sigusr1_dumps_every_stack_and_keeps_serving(tmp_path: Path, library: Path) -> None:
    d = MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state").start()
    try:
        d.wait_for_log("tree: generation")
        d.signal(signal.SIGUSR1)
        d.wait_for_log("stack dump:")
        log = d.log()
        assert "Current thread" in log or "Thread 0x" in log  # faulthandler: all threads
        assert "task fuse-main" in log and "task:sync" in log  # trio tasks by name
        assert len(mounted_files(d.mountpoint)) == 8
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=20) == 0
    finally:
        d.stop()


def test_external_fusermount_u_stops_the_daemon_cleanly(tmp_path: Path, library: Path) -> None:
    d = MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state").start()
    try:
        d.wait_for_log("tree: generation")
        subprocess.run(["fusermount3", "-u", str(d.mountpoint)], check=True, timeout=10)
        assert d.wait(timeout=20) == 0
        assert "unmounted from outside" in d.log()
        assert find_mount(d.mountpoint) is None
    finally:
        d.stop()


def test_reads_waiting_on_an_origin_get_their_data_during_the_drain(
    tmp_path: Path, library: Path
) -> None:
    """SIGTERM while a read waits on a slow origin: the read gets its bytes (the fetch it
    waits on keeps running through the drain) and the log counts it truthfully."""
    from tests.support.daemon import scan

    scan(library, tmp_path / "state")  # tags read now, without the slow origin
    config = write_config(tmp_path, fuse={"drain_timeout": "10s", "read_deadline": "20s"})
    d = MountedDaemon(
        tmp_path / "mnt",
        [library],
        tmp_path / "state",
        config=config,
        env={"MUSICFS_FAILPOINTS": "origin.local.read=sleep(2500)"},
    ).start()
    try:
        d.wait_for_log("tree: generation")
        path = mounted_files(d.mountpoint)[0]
        got: dict[str, object] = {}

        def one_read() -> None:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            try:
                got["data"] = os.pread(fd, 65536, 0)
            except OSError as exc:
                got["errno"] = exc.errno
            finally:
                os.close(fd)
            got["at"] = time.monotonic()

        import threading

        reader = threading.Thread(target=one_read, daemon=True)
        reader.start()
        time.sleep(0.5)  # the read is now waiting on the origin (2.5 s)
        sent = time.monotonic()
        d.signal(signal.SIGTERM)
        reader.join(15)
        assert not reader.is_alive()
        assert "errno" not in got, f"the read failed with {got.get('errno')}:\n{d.log()}"
        data = got["data"]
        assert isinstance(data, bytes) and len(data) == 65536
        assert isinstance(got["at"], float) and got["at"] - sent < 10
        assert d.wait(timeout=30) == 0
        drained = next(x for x in d.log().splitlines() if "shutdown: drained" in x)
        assert "drained 1 in-flight reads (1 with data, 0 with an error, 0 answered EIO" in drained
    finally:
        d.stop()
    # The bytes are the origin's (the same file mounted again, now without the failpoint).
    with MountedDaemon(tmp_path / "mnt", [library], tmp_path / "state") as d2:
        again = mounted_files(d2.mountpoint)[0]
        with again.open("rb") as f:
            assert f.read(65536) == data
