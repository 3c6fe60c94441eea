"""Layer 2: a real ``musicfs mount`` with ``[metrics] listen`` set serves Prometheus
metrics that follow what the mount does; without it, the daemon listens on no TCP port."""

from __future__ import annotations

import os
import re
import time
import urllib.request
from pathlib import Path

from tests.support.daemon import MountedDaemon, scan, wait_for_files
from tests.support.library import make_library
from tests.support.players import free_port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def _value(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in:\n{text}"
    return float(match.group(1))


def _listening_tcp_sockets(pid: int) -> set[int]:
    """Inodes of the TCP sockets ``pid`` holds in LISTEN state."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    listening.add(int(fields[9]))
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}") if fd.isdigit() else ""
        if target.startswith("socket:["):
            held.add(int(target[8:-1]))
    return listening & held


def test_a_daemon_serves_metrics_that_follow_its_reads(tmp_path: Path) -> None:
    made = make_library(tmp_path / "lib", albums=1, tracks=3)
    scan(tmp_path / "lib", tmp_path / "state")
    port = free_port()
    config = tmp_path / "musicfs.toml"
    config.write_text(f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    daemon = MountedDaemon(tmp_path / "mnt", [tmp_path / "lib"], tmp_path / "state", config=config)
    with daemon:
        files = wait_for_files(daemon.mountpoint, len(made), timeout=20)
        daemon.wait_for_log(f"metrics: serving Prometheus metrics on http://127.0.0.1:{port}")
        before = _scrape(port)
        assert _value(before, "musicfs_up") == 1
        assert _value(before, "musicfs_tracks") == len(made)
        assert 'musicfs_origin_state{origin="local",state="healthy"} 1.0' in before
        reads_before = _value(before, "musicfs_fuse_reads_total")
        for f in files:
            f.read_bytes()
        deadline = time.monotonic() + 10
        after = _scrape(port)
        while _value(after, "musicfs_fuse_reads_total") <= reads_before:
            assert time.monotonic() < deadline, after
            time.sleep(0.1)
            after = _scrape(port)
        assert _value(after, "musicfs_fuse_read_bytes_total") >= sum(p.stat().st_size for p in made)
        assert _value(after, "musicfs_reader_origin_fetches_total") >= len(made)
    # The endpoint went with the daemon.
    try:
        _scrape(port)
        raise AssertionError("metrics still served after the daemon stopped")
    except OSError:
        pass


def test_without_a_metrics_section_the_daemon_listens_on_no_port(tmp_path: Path) -> None:
    make_library(tmp_path / "lib", albums=1, tracks=1)
    daemon = MountedDaemon(tmp_path / "mnt", [tmp_path / "lib"], tmp_path / "state")
    with daemon:
        wait_for_files(daemon.mountpoint, 1, timeout=20)
        assert _listening_tcp_sockets(daemon.pid) == set()
        assert "metrics:" not in daemon.log()
