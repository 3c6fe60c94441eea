"""Run a real ``musicfs mount`` process against a real FUSE mount point."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from musicfs.service.mounts import find_mount, is_stale, lazy_unmount, mount_entries, probe


def require_fuse() -> None:
    """Layer 2 needs root and /dev/fuse. Missing them is a failure, not a skip."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        problems.append("/dev/fuse not usable")
    if problems:
        pytest.fail("layer 2 (process) cannot run here: " + ", ".join(problems))


def unmount_leftovers(root: Path) -> None:
    """Lazily unmount whatever a failed test left mounted under ``root``."""
    prefix = os.path.abspath(root) + "/"
    for entry in reversed(mount_entries()):
        if entry.mountpoint.startswith(prefix):
            lazy_unmount(Path(entry.mountpoint))


def musicfs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "musicfs", *args]


def scan(lib: Path, state: Path, timeout: float = 120) -> None:
    """``musicfs scan`` of one local origin into ``state`` (a catalog to mount)."""
    subprocess.run(
        musicfs_cmd("scan", "--origin", str(lib), "--state-dir", str(state)),
        check=True,
        capture_output=True,
        timeout=timeout,
    )


def mounted_files(mnt: Path) -> list[Path]:
    """Every file in the mounted tree, in path order."""
    return sorted(p for p in mnt.rglob("*") if p.is_file())


def wait_for_files(mnt: Path, count: int, timeout: float) -> list[Path]:
    """The mount's files once there are ``count`` of them (or whatever is there at the
    timeout): a start-up sync publishes tracks as it goes."""
    deadline = time.monotonic() + timeout
    files = mounted_files(mnt)
    while len(files) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        files = mounted_files(mnt)
    return files


class MountedDaemon:
    def __init__(
        self,
        mountpoint: Path,
        origins: list[Path | str],
        state_dir: Path,
        cache_dir: Path | None = None,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        config: Path | None = None,
        nofile: int | None = None,
    ):
        require_fuse()
        self.nofile = nofile  # RLIMIT_NOFILE for the daemon process
        self.mountpoint = mountpoint
        self.log_path = state_dir.parent / f"daemon-{mountpoint.name}.log"
        self.state_dir = state_dir
        args = ["mount", "--state-dir", str(state_dir)]
        # Never the user's ~/.cache: each test gets its own chunk cache next to its state.
        self.cache_dir = cache_dir or state_dir.parent / f"cache-{state_dir.name}"
        args += ["--cache-dir", str(self.cache_dir)]
        if config is not None:
            args += ["--config", str(config)]
        for origin in origins:
            args += ["--origin", str(origin)]
        args += [*list(extra or []), str(mountpoint)]
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0, *, wait: bool = True) -> MountedDaemon:
        """Start the daemon; unless ``wait`` is false, return once its mount answers."""
        mountpoint_ready = self.mountpoint
        mountpoint_ready.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        nofile = self.nofile

        def limits() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            musicfs_cmd(*self.args),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            preexec_fn=limits if nofile is not None else None,
        )
        if not wait:
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            # Mounted and answering: a stale mount left by a killed daemon is listed too,
            # but answers ENOTCONN.
            if find_mount(self.mountpoint) is not None and probe(self.mountpoint, 2) == 0:
                return self
            time.sleep(0.05)
        raise AssertionError(f"mount did not appear within {timeout}s:\n{self.log()}")

    def status(self) -> dict[str, Any]:
        """``musicfs status --json`` of this daemon (through its control socket)."""
        out = subprocess.run(
            musicfs_cmd(
                "status", "--json", "--state-dir", str(self.state_dir), str(self.mountpoint)
            ),
            capture_output=True,
            text=True,
            timeout=30,
            env=self.env,
            check=True,
        )
        status: dict[str, Any] = json.loads(out.stdout)
        return status

    def wait_until_healthy(self, origin: str, timeout: float = 30.0) -> None:
        """Until the daemon's health checks find ``origin`` answering again."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.status()["origins"]["origins"][origin]["state"] == "healthy":
                return
            time.sleep(0.1)
        raise AssertionError(f"origin {origin} not healthy within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged within {timeout}s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if find_mount(self.mountpoint) is not None or is_stale(self.mountpoint):
            lazy_unmount(self.mountpoint)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> MountedDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def forget_page_cache(path: Path) -> None:
    """Drop the kernel's copy of one file, so the next read really asks the daemon."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
