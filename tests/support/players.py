"""Real music clients driven headless: mpv over its JSON IPC socket, mpd (with mpc) on its
own config in a scratch folder, beets on a scratch library.

Every call has a timeout: a client that hangs on the mount fails the test, it never
hangs the run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REQUIRE_ALL = os.environ.get("MUSICFS_REQUIRE_ALL_LAYERS") == "1"


def require_clients(*tools: str) -> None:
    """The e2e layer needs real players. Missing ones fail under
    MUSICFS_REQUIRE_ALL_LAYERS=1 (CI), and skip elsewhere."""
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    if not missing:
        return
    message = f"e2e clients not installed: {', '.join(missing)} (scripts/setup-debian.sh test)"
    if REQUIRE_ALL:
        pytest.fail(message)
    pytest.skip(message)


def beet_command() -> str:
    """beets comes from the test extras, next to this interpreter."""
    return str(Path(sys.executable).with_name("beet"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mpv:
    """``mpv --idle`` with no audio device, driven over its IPC socket."""

    def __init__(self, workdir: Path, *, untimed: bool = True):
        self.socket_path = workdir / "mpv.sock"
        self.log_path = workdir / "mpv.log"
        args = [
            "mpv",
            *("--no-config", "--idle=yes", "--pause", "--no-video", "--ao=null"),
            *(["--ao-null-untimed"] if untimed else []),
            "--really-quiet",
            f"--input-ipc-server={self.socket_path}",
            f"--log-file={self.log_path}",
        ]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not self.socket_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mpv did not open its IPC socket:\n{self.log()}")
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(self.socket_path))
        self._buffer = b""
        self._events: list[dict[str, Any]] = []
        self._next_id = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _message(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"mpv said nothing within {timeout}s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise AssertionError(f"mpv closed its IPC socket:\n{self.log()[-3000:]}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def command(self, *args: object, timeout: float = 5.0) -> Any:
        """Run one IPC command; its ``data``. Raises on an error reply or no reply."""
        self._next_id += 1
        request = {"command": list(args), "request_id": self._next_id}
        self.sock.sendall(json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            message = self._message(max(0.0, deadline - time.monotonic()))
            if message.get("request_id") == self._next_id:
                if message.get("error") != "success":
                    raise AssertionError(f"mpv {args}: {message.get('error')}")
                return message.get("data")
            if "event" in message:
                self._events.append(message)

    def responds_within(self, seconds: float) -> float:
        """How long a property read takes; fails if it does not answer within ``seconds``."""
        started = time.monotonic()
        self.command("get_property", "idle-active", timeout=seconds)
        return time.monotonic() - started

    def wait_event(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._events):
                if event["event"] == name:
                    return self._events.pop(i)
            message = self._message(max(0.0, deadline - time.monotonic()))
            if "event" in message:
                self._events.append(message)

    def drop_events(self) -> None:
        self._events.clear()

    def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, AssertionError):
            self.command("quit", timeout=2)
        self.sock.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Mpv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Mpd:
    """mpd in the foreground on a scratch config: its music directory is the mount, its
    database and state live in ``workdir``, its only output is the null sink, it listens on
    a free loopback port. Runs as the same user as the test (a FUSE mount without
    ``allow_other`` is readable by its owner only), not as the system service."""

    def __init__(self, workdir: Path, music: Path):
        self.dir = workdir
        self.port = free_port()
        self.log_path = workdir / "mpd.log"
        self.config = workdir / "mpd.conf"
        self.config.write_text(
            f'music_directory "{music}"\n'
            f'db_file "{workdir / "database"}"\n'
            f'state_file "{workdir / "state"}"\n'
            f'log_file "{self.log_path}"\n'
            'bind_to_address "127.0.0.1"\n'
            f'port "{self.port}"\n'
            'auto_update "no"\n'
            'zeroconf_enabled "no"\n'
            'audio_output {\n  type "null"\n  name "null"\n  mixer_type "none"\n}\n'
        )
        self.proc = subprocess.Popen(
            ["mpd", "--no-daemon", "--stderr", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "mpd.stderr").open("ab"),
        )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mpd did not start:\n{self.log()}")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            time.sleep(0.05)

    def log(self) -> str:
        parts = [self.dir / "mpd.stderr", self.log_path]
        return "\n".join(p.read_text(errors="replace") for p in parts if p.exists())

    def mpc(self, *args: str, timeout: float = 10.0) -> str:
        """``mpc -h 127.0.0.1 -p PORT args``; its output. Fails on a non-zero exit."""
        try:
            proc = subprocess.run(
                ["mpc", "-h", "127.0.0.1", "-p", str(self.port), *args],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"mpc {args}: no answer in {timeout}s\n{self.log()}") from exc
        assert proc.returncode == 0, f"mpc {args}: {proc.stderr}\n{self.log()[-3000:]}"
        return proc.stdout

    def status(self, within: float = 5.0) -> str:
        """``mpc status``; fails unless mpd answers within ``within`` seconds."""
        started = time.monotonic()
        status = self.mpc("status", timeout=within + 5)
        assert time.monotonic() - started < within, f"mpd took over {within}s: {status}"
        return status

    def wait_status(self, pattern: str, timeout: float, within: float = 5.0) -> str:
        """Poll ``mpc status`` (each answer within ``within``) until it matches."""
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.status(within)
            if re.search(pattern, status):
                return status
            time.sleep(0.1)
        raise AssertionError(f"mpd status never matched {pattern!r}:\n{status}\n{self.log()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def __enter__(self) -> Mpd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def beet(workdir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """beets on a scratch library in ``workdir``: never the user's own config or library."""
    config = workdir / "beets.yaml"
    if not config.exists():
        config.write_text(
            f"directory: {workdir / 'music'}\n"
            f"library: {workdir / 'library.db'}\n"
            "plugins: []\n"
            "import:\n  copy: no\n  move: no\n  write: no\n  log: null\n"
        )
    return subprocess.run(
        [beet_command(), "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "BEETSDIR": str(workdir)},
    )
