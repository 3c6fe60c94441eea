"""The file systems MusicFS is compared with, mounted the way their users mount them, and
the network tools the comparisons use.

A *peer* is one way of reaching the same library: the native folder, ``sshfs`` and
``rclone mount --vfs-cache-mode full`` over the same OpenSSH sshd, and MusicFS over that
sshd (or over S3). ``peer.mount(fresh=...)`` yields a ``Mounted`` (path + the serving
process, for its RSS); ``fresh`` empties the peer's own data cache first (rclone's VFS
cache, MusicFS's chunk cache; MusicFS keeps its catalog, as it does across a reboot).

``tests.support.netns.ByteCounter`` counts the bytes a server sends (an nftables
counter inside its namespace); ``shaped`` limits the veth link to a rate with ``tc ...
tbf`` in both directions.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from musicfs.service.mounts import find_mount, lazy_unmount
from tests.support.daemon import MountedDaemon
from tests.support.netns import NetNS, SSHServer


@dataclass
class Mounted:
    path: Path
    pid: int | None  # the process serving the mount (None: the kernel's own file system)

    def peak_rss_mib(self) -> float | None:
        """VmHWM of the serving process (and for rclone/sshfs nothing else serves)."""
        if self.pid is None:
            return None
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"VmHWM:\s+(\d+) kB", text)
        return int(match.group(1)) / 1024 if match else None


class Peer(Protocol):
    name: str

    def mount(self, *, fresh: bool) -> AbstractContextManager[Mounted]: ...


class Native:
    """The library folder itself: what the disk and the kernel do without FUSE."""

    name = "native"

    def __init__(self, lib: Path):
        self.lib = lib

    @contextmanager
    def mount(self, *, fresh: bool) -> Iterator[Mounted]:
        del fresh
        yield Mounted(self.lib, None)


@contextmanager
def _foreign(cmd: list[str], mnt: Path, log_path: Path) -> Iterator[Mounted]:
    """Run a FUSE client in the foreground until its mount appears; unmount on exit."""
    mnt.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while find_mount(mnt) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[0]} did not mount:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield Mounted(mnt, proc.pid)
    finally:
        lazy_unmount(mnt)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


class Sshfs:
    """sshfs with the options its users are told to set: read-only, reconnect, keepalive."""

    name = "sshfs"

    def __init__(self, sshd: SSHServer, lib: Path, work: Path):
        self.sshd, self.lib, self.work = sshd, lib, work

    def command(self, mnt: Path) -> list[str]:
        return [
            "sshfs",
            "-f",
            f"{self.sshd.user}@{self.sshd.ns.ip}:{self.lib}",
            str(mnt),
            "-o",
            f"ro,reconnect,ServerAliveInterval=15,IdentityFile={self.sshd.client_key},"
            f"UserKnownHostsFile={self.sshd.known_hosts},StrictHostKeyChecking=yes,BatchMode=yes",
        ]

    @contextmanager
    def mount(self, *, fresh: bool) -> Iterator[Mounted]:
        del fresh  # sshfs keeps nothing between mounts
        mnt = self.work / "sshfs-mnt"
        with _foreign(self.command(mnt), mnt, self.work / "sshfs.log") as mounted:
            yield mounted


class Rclone:
    """``rclone mount --vfs-cache-mode full`` over SFTP, rclone's advice for players (its
    remote-shell hash check off: see ``command``)."""

    name = "rclone"

    def __init__(self, sshd: SSHServer, lib: Path, work: Path):
        self.sshd, self.lib, self.work = sshd, lib, work
        self.cache = work / "rclone-cache"

    def command(self, mnt: Path) -> list[str]:
        # disable_hashcheck: rclone would otherwise run md5sum in a remote shell after each
        # download, and this server's root shell starts slowly (a NAS's need not).
        remote = (
            f":sftp,host={self.sshd.ns.ip},user={self.sshd.user},"
            f"key_file={self.sshd.client_key},known_hosts_file={self.sshd.known_hosts},"
            f"disable_hashcheck=true:{self.lib}"
        )
        return [
            *("rclone", "mount", remote, str(mnt), "--vfs-cache-mode", "full", "--read-only"),
            *("--cache-dir", str(self.cache), "--config", "/dev/null"),
        ]

    @contextmanager
    def mount(self, *, fresh: bool) -> Iterator[Mounted]:
        if fresh:
            shutil.rmtree(self.cache, ignore_errors=True)
        mnt = self.work / "rclone-mnt"
        with _foreign(self.command(mnt), mnt, self.work / "rclone.log") as mounted:
            yield mounted


class MusicFS:
    """A ``musicfs mount`` with its shipped defaults (deadlines, cache) on one origin. The
    catalog is kept between mounts (scanned once, like any restart); ``fresh`` empties the
    chunk cache."""

    def __init__(
        self,
        name: str,
        origin: dict[str, object],
        work: Path,
        env: dict[str, str] | None = None,
        extra_config: str = "",
    ):
        self.name = name
        self.env = env or {}
        self.base = work / f"musicfs-{name}"
        self.base.mkdir(parents=True, exist_ok=True)
        lines = ["[library]", "scan_interval = 0", extra_config, "[[origin]]"]
        lines += [f'{key} = "{value}"' for key, value in origin.items()]
        self.config = self.base / "musicfs.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.daemon: MountedDaemon | None = None

    @contextmanager
    def mount(self, *, fresh: bool) -> Iterator[Mounted]:
        cache = self.base / "cache"
        if fresh:
            shutil.rmtree(cache, ignore_errors=True)
        daemon = MountedDaemon(
            self.base / "mnt", [], self.base / "state", cache, config=self.config, env=self.env
        )
        with daemon:
            self.daemon = daemon
            try:
                yield Mounted(daemon.mountpoint, daemon.pid)
            finally:
                self.daemon = None


def make_album(root: Path, files: int, size: int) -> list[Path]:
    """``files`` tagged MP3s of about ``size`` bytes in one album (random bytes after the
    audio, distinct sizes), readable by any server user."""
    from musicfs.catalog.tags import Tags
    from tests.support.library import tagged_file

    made = []
    for i in range(files):
        path = root / "Artist" / "Album" / f"{i + 1:02d}.mp3"
        tagged_file(path, "mp3", Tags(title=f"Track {i}", artist="Artist", album="Album"))
        with path.open("ab") as f:
            f.write(random.Random(i).randbytes(size + i * 4096 - path.stat().st_size))
        made.append(path)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return made


def wait_for_tracks(mnt: Path, count: int, timeout: float = 300) -> list[Path]:
    """The mount's files once ``count`` are listed (a first sync publishes as it goes)."""
    deadline = time.monotonic() + timeout
    files: list[Path] = []
    while time.monotonic() < deadline:
        files = sorted(p for p in mnt.rglob("*") if p.is_file())
        if len(files) >= count:
            return files
        time.sleep(0.2)
    raise RuntimeError(f"{mnt}: {len(files)} of {count} files after {timeout}s")


@contextmanager
def shaped(ns: NetNS, rate: str = "100mbit") -> Iterator[None]:
    """The veth link limited to ``rate`` each way (a token bucket on both ends)."""
    args = ["root", "tbf", "rate", rate, "burst", "256kb", "latency", "100ms"]
    subprocess.run(["tc", "qdisc", "add", "dev", ns.host_if, *args], check=True, timeout=30)
    ns.exec("tc", "qdisc", "add", "dev", ns.ns_if, *args)
    try:
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", "dev", ns.host_if, "root"], timeout=30)
        ns.exec("tc", "qdisc", "del", "dev", ns.ns_if, "root", check=False)


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: run scripts/setup-debian.sh bench")
