"""Layer 2: the control socket (`musicfs status`, `musicfs unmount`) and SIGHUP reloads,
against a real daemon."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from musicfs.service.control import socket_path
from musicfs.service.mounts import find_mount, is_stale
from tests.support.daemon import MountedDaemon, musicfs_cmd, unmount_leftovers
from tests.support.library import make_library


@pytest.fixture(autouse=True)
def _no_leftover_mounts(tmp_path: Path) -> Iterator[None]:
    yield
    unmount_leftovers(tmp_path)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        musicfs_cmd(*args), capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


def test_status_json_and_text(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=2, tracks=3)
    # A long runtime path: sockaddr_un holds 108 bytes, the daemon and client cope anyway.
    run_dir = tmp_path / ("r" * 90)
    env = {"XDG_RUNTIME_DIR": str(run_dir)}
    state = tmp_path / "state"
    with MountedDaemon(tmp_path / "mnt", [lib], state, env=env) as d:
        d.wait_for_log("tree: generation")
        sock = socket_path(run_dir / "musicfs", d.mountpoint)
        assert len(os.fsencode(sock)) > 108
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        proc = cli(env, "status", "--json", "--state-dir", str(state), str(d.mountpoint))
        assert proc.returncode == 0, proc.stderr
        status = json.loads(proc.stdout)
        assert status["pid"] == d.pid and status["state"] == "serving"
        assert status["mode"] == "online" and status["tracks"] == 6
        assert status["tasks"]["sync"]["policy"] == "best-effort"
        assert status["tasks"]["health"] == {**status["tasks"]["health"], "state": "running"}
        assert status["tasks"]["health"]["policy"] == "critical"
        assert status["origins"]["origins"]["local"]["state"] == "healthy"
        assert status["sync"]["finished"] >= 1 and status["sync"]["last"]["local"]["listed"] == 6
        assert status["fuse"]["inflight"] == 0
        # Without the mount point: the only daemon in that runtime directory answers.
        text = cli(env, "status", "--state-dir", str(state))
        assert text.returncode == 0, text.stderr
        assert "serving, online, 6 tracks" in text.stdout
        assert "task health (critical): running" in text.stdout
        assert f"origin local (file://{lib}): healthy" in text.stdout


def test_status_without_a_daemon_says_so(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "run")}
    (tmp_path / "mnt").mkdir()
    proc = cli(env, "status", "--state-dir", str(tmp_path / "state"), str(tmp_path / "mnt"))
    assert proc.returncode == 1
    assert "no running MusicFS" in proc.stderr


def test_unmount_asks_the_daemon_to_stop_gracefully(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "run")}
    d = MountedDaemon(tmp_path / "mnt", [lib], tmp_path / "state", env=env).start()
    try:
        proc = cli(env, "unmount", "--state-dir", str(tmp_path / "state"), str(d.mountpoint))
        assert proc.returncode == 0, proc.stderr
        assert "unmounted" in proc.stdout
        assert d.wait(timeout=20) == 0
        assert "control: unmount requested" in d.log()
        assert "shutdown: stores committed and closed" in d.log()
        assert find_mount(d.mountpoint) is None
        assert not socket_path(tmp_path / "run" / "musicfs", d.mountpoint).exists()
    finally:
        d.stop()


def test_unmount_removes_a_stale_mount_with_no_daemon(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=1)
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "run")}
    d = MountedDaemon(tmp_path / "mnt", [lib], tmp_path / "state", env=env).start()
    d.proc.kill()  # type: ignore[union-attr]
    d.wait(timeout=10)
    d._log.close()
    assert is_stale(d.mountpoint)
    proc = cli(env, "unmount", "--state-dir", str(tmp_path / "state"), str(d.mountpoint))
    assert proc.returncode == 0, proc.stderr
    assert "removed the stale mount" in proc.stdout
    assert find_mount(d.mountpoint) is None


def test_sighup_reloads_origins_without_unmounting(tmp_path: Path) -> None:
    lib, extra = tmp_path / "lib", tmp_path / "extra"
    make_library(lib, albums=1, tracks=2)
    make_library(extra / "more", albums=1, tracks=3)
    config = tmp_path / "config.toml"
    config.write_text(f'[[origin]]\nurl = "{lib}"\nname = "a"\n')
    d = MountedDaemon(tmp_path / "mnt", [], tmp_path / "state", config=config).start()
    try:
        d.wait_for_log("tree: generation")
        first = sorted(p for p in d.mountpoint.rglob("*") if p.is_file())
        assert len(first) == 2
        held = first[0].open("rb")  # a player with a file open across the reload
        config.write_text(
            f'[[origin]]\nurl = "{lib}"\nname = "a"\n'
            f'[[origin]]\nurl = "{extra}"\nname = "b"\n'
            '[fuse]\nread_deadline = "3s"\nmax_tasks = 7\n'
        )
        d.signal(signal.SIGHUP)
        d.wait_for_log("reload: applied")
        assert "reload: fuse.max_tasks changed; it takes effect after a restart" in d.log()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if len([p for p in d.mountpoint.rglob("*") if p.is_file()]) == 5:
                break
            time.sleep(0.1)
        assert len([p for p in d.mountpoint.rglob("*") if p.is_file()]) == 5
        assert held.read() and not held.close()
        # A broken config is reported and changes nothing.
        config.write_text("[fuse]\nread_deadline = \n")
        d.signal(signal.SIGHUP)
        d.wait_for_log("keeping the running configuration")
        assert len([p for p in d.mountpoint.rglob("*") if p.is_file()]) == 5
        assert d.proc is not None and d.proc.poll() is None
        assert "unmounted" not in d.log()
        d.signal(signal.SIGTERM)
        assert d.wait(timeout=20) == 0
    finally:
        d.stop()


def _env_without_runtime_dir(home: Path) -> dict[str, str]:
    """A shell with no $XDG_RUNTIME_DIR (su, cron, ssh without a session) and another
    home: the client's own defaults point nowhere near the daemon's state dir."""
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_RUNTIME_DIR", "RUNTIME_DIRECTORY")}
    env["HOME"] = str(home)
    return env


def test_the_mount_point_alone_finds_the_daemon(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    (tmp_path / "somewhere").mkdir()
    state = tmp_path / "somewhere" / "state"  # its control socket is in state/run
    d = MountedDaemon(tmp_path / "mnt", [lib], state)
    d.env = _env_without_runtime_dir(tmp_path / "daemon-home")
    d.start()
    client = _env_without_runtime_dir(tmp_path / "client-home")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            musicfs_cmd(*args), capture_output=True, text=True, timeout=60, env=client
        )

    try:
        d.wait_for_log("tree: generation")
        proc = run("status", "--json", str(d.mountpoint))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["pid"] == d.pid
        proc = run("status", str(d.mountpoint))
        assert proc.returncode == 0 and "serving" in proc.stdout, proc.stderr
        proc = run("unmount", str(d.mountpoint))
        assert proc.returncode == 0, proc.stderr
        assert d.wait(timeout=20) == 0
        assert find_mount(d.mountpoint) is None
    finally:
        d.stop()
    # Nothing left registered: the mount point no longer finds a daemon.
    proc = run("status", "--json", str(d.mountpoint))
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {
        "running": False,
        "error": proc.stderr.strip().removeprefix("musicfs: "),
    }


def test_unmount_with_a_config_uses_its_mount_point(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=1)
    mnt, state = tmp_path / "mnt", tmp_path / "state"
    config = tmp_path / "musicfs.toml"
    config.write_text(f'mountpoint = "{mnt}"\nstate_dir = "{state}"\n[[origin]]\nurl = "{lib}"\n')
    d = MountedDaemon(mnt, [], state, config=config)
    d.env = _env_without_runtime_dir(tmp_path / "home")
    d.args.remove(str(mnt))  # the config names it
    d.start()
    try:
        proc = subprocess.run(
            musicfs_cmd("unmount", "--config", str(config)),
            capture_output=True,
            text=True,
            timeout=60,
            env=d.env,
        )
        assert proc.returncode == 0, proc.stderr
        assert d.wait(timeout=20) == 0
    finally:
        d.stop()


def test_status_json_without_a_daemon_answers_on_stdout(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    proc = subprocess.run(
        musicfs_cmd("status", "--json", str(tmp_path / "mnt")),
        capture_output=True,
        text=True,
        timeout=60,
        env=_env_without_runtime_dir(tmp_path / "home"),
    )
    assert proc.returncode == 1
    answer = json.loads(proc.stdout)
    assert answer["running"] is False and "no running MusicFS" in answer["error"]


@pytest.mark.parametrize("runtime", ["per-state-dir", "shared-xdg-runtime-dir"])
def test_a_named_state_dir_finds_its_own_daemon_and_no_other(
    tmp_path: Path, runtime: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Daemons are registered machine-wide, but `status --state-dir X` without a mount
    # point must answer for X's daemon only: another one's status would be a wrong answer.
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    # A desktop session sets XDG_RUNTIME_DIR: then both daemons listen in one folder.
    if runtime == "per-state-dir":
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    with MountedDaemon(tmp_path / "mnt-a", [lib], first / "state") as a:
        a.wait_for_log("tree: generation")
        proc = cli({}, "status", "--json", "--state-dir", str(first / "state"))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["pid"] == a.pid
        proc = cli({}, "status", "--json", "--state-dir", str(second / "state"))
        assert proc.returncode == 1, proc.stdout
        assert json.loads(proc.stdout)["running"] is False
        with MountedDaemon(tmp_path / "mnt-b", [lib], second / "state") as b:
            b.wait_for_log("tree: generation")
            for d, state in ((a, first / "state"), (b, second / "state")):
                proc = cli({}, "status", "--json", "--state-dir", str(state))
                assert proc.returncode == 0, proc.stderr
                assert json.loads(proc.stdout)["pid"] == d.pid
