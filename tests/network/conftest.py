"""Fixtures for layer 3: servers in namespaces, libraries readable by an unprivileged
SFTP user (so permission errors are real)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import NetNS, S3Server, SSHServer


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A scratch folder every user can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="musicfs-net-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        for p in path.rglob("*"):
            if p.is_dir() and not p.is_symlink():
                os.chmod(p, 0o755)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sshd(world_dir: Path) -> Iterator[SSHServer]:
    """OpenSSH in a namespace of its own, logging in the unprivileged user ``nobody``."""
    with NetNS() as ns:
        yield SSHServer(ns, world_dir, user="nobody").start()


@pytest.fixture
def s3(world_dir: Path) -> Iterator[S3Server]:
    """moto's S3 server in a namespace of its own (separate from sshd's, so one can be
    cut off while the other keeps serving)."""
    with NetNS() as ns:
        yield S3Server(ns, world_dir).start()


@pytest.fixture
def s3_open(world_dir: Path) -> Iterator[S3Server]:
    """moto without authentication: survives a restart with the same credentials."""
    with NetNS() as ns:
        yield S3Server(ns, world_dir, auth=False).start()
