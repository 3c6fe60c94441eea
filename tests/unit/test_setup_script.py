"""scripts/setup-debian.sh on a minimal Debian: not root and no sudo installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-debian.sh"


def test_without_sudo_a_non_root_user_is_told_what_to_run_as_root() -> None:
    # Not under pytest's tmp_path: its parents are private to root, and nobody runs this.
    with tempfile.TemporaryDirectory(prefix="musicfs-setup-") as tmp:
        os.chmod(tmp, 0o755)
        _check(Path(tmp))


def _check(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Only the tools the script needs, and no sudo; dpkg-query answers "not installed" as
    # it does for any package a fresh system lacks.
    for tool in ("bash", "id", "grep", "env"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    (bin_dir / "python3").symlink_to(sys.executable)
    (bin_dir / "dpkg-query").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "dpkg-query").chmod(0o755)
    # A copy: the checkout may sit in a home folder `nobody` cannot enter.
    script = tmp_path / SCRIPT.name
    shutil.copy(SCRIPT, script)
    script.chmod(0o755)
    command = ["bash", str(script), "run"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.fail("setpriv (util-linux) is needed to run this as a non-root user")
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    done = subprocess.run(
        command,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "sudo: command not found" not in done.stderr
    assert "not root and sudo is not installed; run this as root:" in done.stderr
    assert "apt-get install -y --no-install-recommends fuse3 libfuse3-dev" in done.stderr
