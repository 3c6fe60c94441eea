"""Layer 3's sshd is found where the system keeps it (NixOS has no /usr/sbin/sshd)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.netns import sshd_binary


def test_sshd_from_path_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "run" / "current-system" / "sw" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "sshd").write_text("#!/bin/sh\n")
    (bin_dir / "sshd").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    # A relative PATH entry still yields an absolute path: sshd refuses to re-exec otherwise.
    monkeypatch.setenv("PATH", "run/current-system/sw/bin")
    assert sshd_binary() == str(bin_dir / "sshd")


def test_sshd_falls_back_to_debians(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert sshd_binary() == "/usr/sbin/sshd"
