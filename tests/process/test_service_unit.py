"""scripts/check-service.sh (run by `make test`) really validates: systemd's verifier
accepts dist/musicfs.service and rejects broken variants of it. Needs systemd-analyze
(scripts/setup-debian.sh test), hence this layer."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "dist" / "musicfs.service"


def check(unit: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze missing: run scripts/setup-debian.sh test")
    return subprocess.run(
        [str(ROOT / "scripts" / "check-service.sh"), str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_shipped_unit_verifies() -> None:
    result = check(UNIT)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Type=notify", "Type=bogus"),
        ("WatchdogSec=30s", "WatchdogSec=banana"),
        ("Restart=on-failure", "Restartt=on-failure"),
        ("ExecStart=/usr/bin/musicfs", "ExecStart=musicfs/relative"),
    ],
)
def test_a_broken_unit_is_rejected(tmp_path: Path, old: str, new: str) -> None:
    text = UNIT.read_text()
    assert old in text
    broken = tmp_path / "musicfs.service"
    broken.write_text(text.replace(old, new, 1))
    result = check(broken)
    assert result.returncode != 0, f"{new!r} passed verification"
