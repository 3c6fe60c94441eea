"""Layer 1: raising the kernel's max_background for our mount through fusectl -- finding
the connection from /proc/self/mountinfo, writing the limits, and every way it can fail
(each a FusectlError whose message tells the operator what to do).

The control files here are plain files in a folder the fake mountinfo lists as fusectl;
``tests/process/test_fusectl.py`` checks the same code against the kernel's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from musicfs.config import ConfigError, FuseSettings, load_config
from musicfs.service.fusectl import (
    FusectlError,
    Limits,
    connection_name,
    device_of,
    is_fusectl_mounted,
    raise_limits,
    tune_connection,
)

MNT = "/srv/my music"  # a space: mountinfo escapes it as \040


def mountinfo(conns: Path, *extra: str) -> str:
    lines = [
        "22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw",
        f"40 22 0:40 / {conns} rw,relatime - fusectl fusectl rw",
        "61 1 0:52 / /srv/my\\040music rw,nosuid,nodev - fuse.musicfs musicfs ro,user_id=0",
        *extra,
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def kernel(tmp_path: Path) -> dict[str, Path]:
    """A stand-in for /sys/fs/fuse/connections with connection 52 at the kernel default,
    the fuse module's parameters, and a mountinfo listing both."""
    conns = tmp_path / "connections"
    (conns / "52").mkdir(parents=True)
    (conns / "52" / "max_background").write_text("12\n")
    (conns / "52" / "congestion_threshold").write_text("9\n")
    params = tmp_path / "parameters"
    params.mkdir()
    (params / "max_user_bgreq").write_text("100\n")
    (params / "max_user_congthresh").write_text("75\n")
    info = tmp_path / "mountinfo"
    info.write_text(mountinfo(conns))
    return {"root": conns, "parameters": params, "mountinfo": info}


def values(folder: Path) -> tuple[str, str]:
    return (
        (folder / "max_background").read_text(),
        (folder / "congestion_threshold").read_text(),
    )


def test_the_connection_is_the_device_number_of_the_mount() -> None:
    info = mountinfo(Path("/sys/fs/fuse/connections"))
    assert device_of(Path(MNT), info) == (0, 52)
    assert connection_name(0, 52) == "52"
    # The kernel's dev_t: major << 20 | minor (FUSE mounts are anonymous, major 0).
    assert connection_name(8, 3) == str(8 * 2**20 + 3)
    assert device_of(Path("/srv/other"), info) is None
    # The top of a stack wins; something other than FUSE on top is not ours.
    stacked = mountinfo(Path("/x"), "70 61 0:60 / /srv/my\\040music rw - fuse.musicfs musicfs ro")
    assert device_of(Path(MNT), stacked) == (0, 60)
    covered = mountinfo(Path("/x"), "71 61 0:61 / /srv/my\\040music rw - tmpfs tmpfs rw")
    assert device_of(Path(MNT), covered) is None
    assert is_fusectl_mounted(Path("/sys/fs/fuse/connections"), info)
    assert not is_fusectl_mounted(Path("/elsewhere"), info)


def test_raises_both_limits(kernel: dict[str, Path]) -> None:
    outcome = raise_limits(Path(MNT), Limits.for_background(256), privileged=True, **kernel)
    assert outcome.connection == "52"
    assert outcome.before == Limits(12, 9)
    assert outcome.after == Limits(256, 192)  # the threshold at 3/4, as libfuse does
    assert values(kernel["root"] / "52") == ("256\n", "192\n")
    assert not outcome.mounted_fusectl and not outcome.clamped


def test_never_lowers_a_limit_someone_raised_further(kernel: dict[str, Path]) -> None:
    (kernel["root"] / "52" / "max_background").write_text("1000\n")
    outcome = raise_limits(Path(MNT), Limits.for_background(256), privileged=True, **kernel)
    assert outcome.after == Limits(1000, 192)


def test_stays_within_the_kernels_limit(kernel: dict[str, Path]) -> None:
    outcome = raise_limits(Path(MNT), Limits(70000, 70000), privileged=True, **kernel)
    assert outcome.after == Limits(65535, 65535)


def test_unprivileged_is_held_to_the_module_parameters(kernel: dict[str, Path]) -> None:
    # Without CAP_SYS_ADMIN the kernel refuses (EINVAL) more than max_user_bgreq.
    outcome = raise_limits(Path(MNT), Limits.for_background(256), privileged=False, **kernel)
    assert outcome.after == Limits(100, 75)
    assert outcome.clamped


def test_zero_is_never_written() -> None:
    # max_background 0 would block every background request of the connection.
    with pytest.raises(ValueError):
        raise_limits(Path(MNT), Limits(0, 0))


def test_fusectl_not_mounted_and_not_allowed_to_mount(kernel: dict[str, Path]) -> None:
    kernel["mountinfo"].write_text(mountinfo(Path("/not/here")))
    with pytest.raises(FusectlError) as info:
        raise_limits(Path(MNT), Limits(256, 192), privileged=False, may_mount=False, **kernel)
    message = str(info.value)
    assert f"fusectl is not mounted at {kernel['root']}" in message
    assert "run the daemon as root" in message
    assert "mount -t fusectl fusectl /sys/fs/fuse/connections" in message
    assert values(kernel["root"] / "52") == ("12\n", "9\n")


def test_mounting_fusectl_fails(tmp_path: Path, kernel: dict[str, Path]) -> None:
    # A real mount(2), on a folder that does not exist: it fails, nothing is mounted.
    kernel["mountinfo"].write_text(mountinfo(Path("/not/here")))
    kernel["root"] = tmp_path / "missing"
    with pytest.raises(FusectlError, match=r"mounting it failed \((ENOENT|EPERM)"):
        raise_limits(Path(MNT), Limits(256, 192), privileged=True, may_mount=True, **kernel)


def test_mount_point_not_mounted(kernel: dict[str, Path]) -> None:
    with pytest.raises(FusectlError, match="/srv/other is not a FUSE mount"):
        raise_limits(Path("/srv/other"), Limits(256, 192), privileged=True, **kernel)


def test_connection_missing_from_fusectl(kernel: dict[str, Path]) -> None:
    (kernel["root"] / "52" / "max_background").unlink()
    with pytest.raises(FusectlError, match=r"connection 52 \(device 0:52\) is not readable"):
        raise_limits(Path(MNT), Limits(256, 192), privileged=True, **kernel)


def test_write_refused(kernel: dict[str, Path]) -> None:
    # The kernel answers EINVAL or EACCES; a folder in the file's place answers EISDIR.
    folder = kernel["root"] / "52"
    (folder / "congestion_threshold").unlink()
    (folder / "congestion_threshold").mkdir()
    with pytest.raises(FusectlError) as info:
        raise_limits(Path(MNT), Limits(256, 192), privileged=True, **kernel)
    assert "connection 52" in str(info.value)


def test_write_refused_after_reading(kernel: dict[str, Path]) -> None:
    folder = kernel["root"] / "52"
    # Readable, but not a number: what a garbled control file would look like.
    (folder / "max_background").write_text("many\n")
    with pytest.raises(FusectlError, match="is not readable"):
        raise_limits(Path(MNT), Limits(256, 192), privileged=True, **kernel)


def test_tune_connection_logs_one_line_either_way(
    kernel: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="musicfs.service.fusectl"):
        outcome = tune_connection(Path(MNT), 64, privileged=True, **kernel)
    assert outcome is not None and outcome.after == Limits(64, 48)
    assert [r.getMessage() for r in caplog.records] == [
        "fuse: connection 52: max_background 12 -> 64, congestion_threshold 9 -> 48"
    ]
    caplog.clear()
    kernel["mountinfo"].write_text(mountinfo(Path("/not/here")))
    with caplog.at_level(logging.INFO, logger="musicfs.service.fusectl"):
        assert tune_connection(Path(MNT), 64, privileged=False, may_mount=False, **kernel) is None
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "fusectl is not mounted" in record.getMessage()
    assert "delay reads of cached tracks" in record.getMessage()


def test_settings_keep_workers_for_metadata(tmp_path: Path) -> None:
    assert FuseSettings().background_slots == 256
    assert FuseSettings(max_tasks=64).background_slots == 32  # 32 workers stay spare
    assert FuseSettings(max_tasks=2).background_slots == 0  # never below the kernel's 12
    assert FuseSettings(max_background=0).background_slots == 0  # leave the kernel alone
    path = tmp_path / "c.toml"
    path.write_text("[fuse]\nmax_background = 70000\n")
    with pytest.raises(ConfigError, match="at most 65535"):
        load_config(path)
    path.write_text("[fuse]\nmax_background = -1\n")
    with pytest.raises(ConfigError, match="at least 0"):
        load_config(path)
