"""Layer 2: on a real mount the kernel's limits for our FUSE connection really are raised
(read back from /sys/fs/fuse/connections), fusectl is mounted when it is not, and
``fuse.max_background = 0`` leaves the kernel's default alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from musicfs.service.fusectl import CONNECTIONS, connection_name
from musicfs.service.mounts import find_mount
from tests.support.daemon import MountedDaemon, require_fuse
from tests.support.library import make_library

ROOT = Path(__file__).resolve().parents[2]


def kernel_limits(mountpoint: Path) -> tuple[int, int]:
    entry = find_mount(mountpoint)
    assert entry is not None, f"{mountpoint} is not mounted"
    folder = CONNECTIONS / connection_name(*entry.device)
    return (
        int((folder / "max_background").read_text()),
        int((folder / "congestion_threshold").read_text()),
    )


def test_the_daemon_raises_max_background_of_its_connection(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    with MountedDaemon(tmp_path / "mnt", [lib], tmp_path / "state") as d:
        d.wait_for_log("fuse: connection")
        assert kernel_limits(d.mountpoint) == (256, 192)
        assert d.status()["fuse"]["max_background"] == 256
        entry = find_mount(d.mountpoint)
        assert entry is not None
        name = connection_name(*entry.device)
        assert f"fuse: connection {name}: max_background 12 -> 256" in d.log()


def test_zero_leaves_the_kernel_default(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    make_library(lib, albums=1, tracks=2)
    cfg = tmp_path / "musicfs.toml"
    cfg.write_text("[fuse]\nmax_background = 0\n")
    with MountedDaemon(tmp_path / "mnt", [lib], tmp_path / "state", config=cfg) as d:
        d.wait_for_log("fuse: max_background left at the kernel's 12")
        assert kernel_limits(d.mountpoint) == (12, 9)
        assert d.status()["fuse"]["max_background"] is None


# Runs in a private mount namespace (unshare), where fusectl is unmounted first: the
# daemon must mount it itself. Nothing outside the namespace changes.
UNSHARE = ["unshare", "--mount", "--propagation", "private", "--"]
IN_NAMESPACE = """
import json, subprocess, sys
from pathlib import Path
from musicfs.service.mounts import find_mount
from tests.support.daemon import MountedDaemon
from tests.process.test_fusectl import kernel_limits

tmp = Path(sys.argv[1])
if find_mount(Path("/sys/fs/fuse/connections")) is not None:
    subprocess.run(["umount", "/sys/fs/fuse/connections"], check=True)
assert find_mount(Path("/sys/fs/fuse/connections")) is None
with MountedDaemon(tmp / "mnt", [tmp / "lib"], tmp / "state") as d:
    d.wait_for_log("fuse: connection")
    limits = kernel_limits(d.mountpoint)
    log = d.log()
print(json.dumps({"limits": limits, "log": log}))
"""


@pytest.mark.host_root  # mounting fusectl: a user namespace may not
def test_fusectl_is_mounted_when_missing(tmp_path: Path) -> None:
    require_fuse()
    make_library(tmp_path / "lib", albums=1, tracks=2)
    proc = subprocess.run(
        [*UNSHARE, sys.executable, "-c", IN_NAMESPACE, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["limits"] == [256, 192]
    assert "congestion_threshold 9 -> 192 (mounted fusectl)" in result["log"]
