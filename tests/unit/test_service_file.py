"""Layer 1 (gaps 2.7, 2.10, 3.1, 3.7): dist/musicfs.service has what the lifecycle needs."""

from __future__ import annotations

from pathlib import Path

from musicfs.config import FuseSettings, parse_duration

UNIT = Path(__file__).resolve().parents[2] / "dist" / "musicfs.service"


def service_section() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    section = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_notify_watchdog_and_restart_policy() -> None:
    s = service_section()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert parse_duration(s["WatchdogSec"][0]) >= 10
    assert s["Restart"] == ["on-failure"]
    assert s["RestartPreventExitStatus"] == ["2"]  # bad config: restarting cannot help
    assert s["SuccessExitStatus"] == ["3"]  # forced stop by a second signal
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_stale_mounts_are_lazily_unmounted_before_start_and_after_stop() -> None:
    s = service_section()
    for key in ("ExecStartPre", "ExecStopPost"):
        (command,) = s[key]
        assert command.startswith("-/usr/bin/fusermount3 ")  # "-": nothing to clean is fine
        assert "-u" in command.split() and "-z" in command.split()
        assert command.endswith("${MUSICFS_MOUNTPOINT}")
    assert "${MUSICFS_MOUNTPOINT}" in s["ExecStart"][0]


def test_stop_timeout_leaves_room_for_the_drain() -> None:
    s = service_section()
    assert parse_duration(s["TimeoutStopSec"][0]) >= FuseSettings().drain_timeout + 15


def test_state_cache_and_runtime_directories() -> None:
    s = service_section()
    for key in ("StateDirectory", "CacheDirectory", "RuntimeDirectory"):
        assert s[key] == ["musicfs"]
    assert s["RuntimeDirectoryMode"] == ["0700"]  # the control socket is owner-only
