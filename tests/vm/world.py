"""What the Debian machines of tests/vm boot: the cached bookworm rootfs
(scripts/vm-rootfs.sh), a layer on top with this checkout's MusicFS installed non-editable
(a wheel, into /opt/musicfs, with the shipped dist/musicfs.service as its unit) and the
test libraries, and per machine its own upper layer (configuration, disk state)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from musicfs.demo import build_demo_library
from tests.vm.driver import Machine, Network

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
LONG_TRACKS = Path(__file__).resolve().parent / "long-tracks.sh"

# Libraries in the layer (guest paths) and how many long tracks each has.
LIBRARIES = {"/srv/demo": 0, "/srv/long": 3, "/srv/big": 12}

_counter = itertools.count()


def _run(*cmd: str, timeout: int = 600) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def build_rootfs() -> Path:
    out = subprocess.run(
        [str(ROOT / "scripts" / "vm-rootfs.sh")], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"scripts/vm-rootfs.sh failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def build_layer(rootfs: Path, work: Path) -> Path:
    """MusicFS and the libraries over ``rootfs``: built once per test session."""
    layer, wheels = work / "layer", work / "wheels"
    layer.mkdir(parents=True)
    # The wheels of this checkout and its dependencies, built by the dev environment's
    # Python (bookworm's 3.11, the guest's too) and installed in the guest offline.
    _run(
        str(Path(os.environ.get("PYTHON", ROOT / ".venv" / "bin" / "python"))),
        *("-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(wheels), str(ROOT)),
    )
    unit_dir = layer / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    shutil.copy(ROOT / "dist" / "musicfs.service", unit_dir / "musicfs.service")
    (layer / "mnt" / "music").mkdir(parents=True)
    for guest, long_tracks in LIBRARIES.items():
        target = layer / guest.lstrip("/")
        build_demo_library(target)
        if long_tracks:
            _run(str(LONG_TRACKS), str(target), str(long_tracks))
    inside = (
        "set -e; python3 -m venv /opt/musicfs;"
        " /opt/musicfs/bin/pip install -q --disable-pip-version-check --no-index"
        " --find-links /wheels musicfs;"
        " ln -s /opt/musicfs/bin/musicfs /usr/bin/musicfs;"
        " useradd -m -g users -s /bin/sh music"
    )
    merged, scratch = work / "layer-merged", work / "layer-work"
    merged.mkdir()
    scratch.mkdir()
    _run(
        "unshare",
        "--mount",
        "sh",
        "-c",
        f"mount --make-rprivate / && mount -t overlay overlay -o lowerdir={rootfs},"
        f"upperdir={layer},workdir={scratch} {merged} && mkdir -p {merged}/wheels"
        f" && mount --bind {wheels} {merged}/wheels && chroot {merged} sh -c '{inside}'",
    )
    (layer / "wheels").rmdir()
    shutil.rmtree(scratch)
    return layer


class World:
    """The machines of one scenario on one bridge; everything goes at ``close``."""

    def __init__(self, lowers: list[Path], work: Path) -> None:
        self.lowers = lowers
        self.work = work
        self.tag = f"{os.getpid() % 1000}{next(_counter)}"
        self.network = Network(self.tag, _free_prefix())
        self.machines: dict[str, Machine] = {}
        self.loops: list[str] = []

    def machine(
        self,
        name: str,
        *,
        config: str | None = None,
        start_at_boot: bool = False,
        disks: dict[str, int] | None = None,
    ) -> Machine:
        index = len(self.machines) + 1
        state = self.work / f"{self.tag}-{name}"
        upper = state / "upper"
        (upper / "etc" / "musicfs").mkdir(parents=True)
        if config is not None:
            (upper / "etc" / "musicfs" / "config.toml").write_text(config)
        if start_at_boot:
            wants = upper / "etc" / "systemd" / "system" / "multi-user.target.wants"
            wants.mkdir(parents=True)
            (wants / "musicfs.service").symlink_to("/etc/systemd/system/musicfs.service")
        devices = {}
        for guest, mib in (disks or {}).items():
            image = state / f"{guest}.img"
            with image.open("wb") as f:
                f.truncate(mib * 1024 * 1024)
            loop = subprocess.run(
                ["losetup", "--find", "--show", str(image)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            self.loops.append(loop)
            devices[guest] = loop
        machine = Machine(name, index, self.lowers, state, self.network, disks=devices)
        self.machines[name] = machine
        hosts = "".join(f"{m.ip} {m.name}\n" for m in self.machines.values())
        for m in self.machines.values():
            m.hosts = hosts
        return machine

    def run(self, scenario: str, **arguments: object) -> None:
        """The scenario's script, prefixed with the shared prelude, as the NixOS test's
        testScript is; then its function called with ``arguments``."""
        source = (SCENARIOS / "prelude.py").read_text() + (SCENARIOS / f"{scenario}.py").read_text()
        namespace: dict[str, object] = {"__name__": f"vm_{scenario}"}
        exec(compile(source, f"tests/vm/scenarios/{scenario}.py", "exec"), namespace)
        function = namespace[scenario]
        assert callable(function)
        call: Callable[..., None] = function
        call(**arguments)

    def logs(self) -> str:
        parts = []
        for m in self.machines.values():
            if m.log_path.exists():
                parts.append(f"==== {m.name} ====\n" + m.log_path.read_text()[-20000:])
        return "\n".join(parts)

    def close(self) -> None:
        for m in self.machines.values():
            m.release()
        for loop in self.loops:
            subprocess.run(["losetup", "-d", loop], capture_output=True, check=False)
        self.network.close()


def _free_prefix() -> str:
    used = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    for third in range(231, 255):
        prefix = f"192.168.{third}"
        if f" {prefix}." not in used:
            return prefix
    raise RuntimeError("no free 192.168.x.0/24 for the VM network")
