"""Layer 1: setting the kernel's read-ahead of our mount -- the bdi named by the mount's
device in /proc/self/mountinfo, and every way it can fail (a folder of plain files stands
in for /sys/class/bdi; the real kernel is in tests/process/test_fusectl.py's mounts)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from musicfs.fuse.settings import FuseSettings
from musicfs.service.readahead import set_read_ahead, tune_read_ahead

MNT = Path("/srv/my music")
MOUNTINFO = (
    "22 1 0:21 / /sys rw,nosuid - sysfs sysfs rw\n"
    "61 1 0:52 / /srv/my\\040music rw,nosuid,nodev - fuse.musicfs musicfs ro,user_id=0\n"
)


@pytest.fixture
def kernel(tmp_path: Path) -> dict[str, Path]:
    bdi = tmp_path / "bdi"
    (bdi / "0:52").mkdir(parents=True)
    (bdi / "0:52" / "read_ahead_kb").write_text("128\n")
    (bdi / "0:21").mkdir()
    (bdi / "0:21" / "read_ahead_kb").write_text("128\n")
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    return {"root": bdi, "mountinfo": info}


def test_sets_the_read_ahead_of_the_mounts_bdi_only(kernel: dict[str, Path]) -> None:
    outcome = set_read_ahead(MNT, 16, **kernel)
    assert (outcome.bdi, outcome.before_kb, outcome.after_kb) == ("0:52", 128, 16)
    assert (kernel["root"] / "0:52" / "read_ahead_kb").read_text() == "16\n"
    assert (kernel["root"] / "0:21" / "read_ahead_kb").read_text() == "128\n"


def test_zero_is_never_written(kernel: dict[str, Path]) -> None:
    # 0 makes the kernel read page by page: a cold stream would crawl.
    with pytest.raises(ValueError):
        set_read_ahead(MNT, 0, **kernel)
    assert (kernel["root"] / "0:52" / "read_ahead_kb").read_text() == "128\n"


def test_failures_are_logged_not_raised(
    kernel: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    assert tune_read_ahead(Path("/elsewhere"), 16, **kernel) is None
    (kernel["root"] / "0:52" / "read_ahead_kb").unlink()
    assert tune_read_ahead(MNT, 16, **kernel) is None
    assert len(caplog.records) == 2
    assert all("read-ahead" in r.getMessage() for r in caplog.records)


def test_the_default_is_small_but_not_zero() -> None:
    assert 0 < FuseSettings().read_ahead_kb < 128
