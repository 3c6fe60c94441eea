"""The VM scenarios (tests/vm/scenarios, the scripts nixos/tests embed) on Debian machines
with systemd as PID 1 and the shipped dist/musicfs.service."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.driver import subtest
from tests.vm.world import ROOT, SCENARIOS, World

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def world(vm_lowers: list[Path], tmp_path: Path) -> Iterator[World]:
    w = World(vm_lowers, tmp_path)
    try:
        yield w
    finally:
        logs = w.logs()
        w.close()
        (tmp_path / "machines.log").write_text(logs)
        print(logs[-6000:])  # shown when the test failed


NAMES = sorted(p.stem for p in SCENARIOS.glob("*.py") if p.stem != "prelude")


@pytest.mark.parametrize("name", NAMES)
def test_nixos_test_and_debian_run_call_the_same_scenario(name: str) -> None:
    nix = [p for p in (ROOT / "nixos" / "tests").glob("*.nix") if f'"{name}"' in p.read_text()]
    assert len(nix) == 1, f"nixos/tests embedding {name}: {nix}"
    assert re.search(rf"^\s+{name}\(", nix[0].read_text(), re.M), f"{nix[0]} never calls it"
    debian = Path(__file__).read_text()
    assert f'world.run(\n        "{name}"' in debian or f'world.run("{name}"' in debian


def test_crash_recovery(world: World) -> None:
    config = '[fuse]\nallow_other = true\nmax_tasks = 2\n\n[[origin]]\nurl = "/srv/demo"\n'
    machine = world.machine("machine", config=config, start_at_boot=True)
    machine.start()
    world.run(
        "crash_recovery",
        machine=machine,
        subtest=subtest,
        origin="/srv/demo",
        daemon_user="root",
        path="/usr/sbin:/usr/bin:/sbin:/bin",
    )


def test_tiny_disk(world: World) -> None:
    config = (
        "[fuse]\nallow_other = true\n\n"
        '[cache]\nmax_size = "1G"\nmin_free = "1M"\n\n'
        '[[origin]]\nurl = "/srv/big"\n'
    )
    machine = world.machine("machine", config=config, start_at_boot=True, disks={"vdb": 16})
    machine.start()
    world.run("tiny_disk", machine=machine, subtest=subtest, origin="/srv/big", disk="/dev/vdb")


def test_sftp_outage(world: World) -> None:
    secrets = "/var/lib/musicfs-secrets"
    config = (
        '[fuse]\nallow_other = true\nread_deadline = "3s"\n\n'
        '[timeouts]\noperation = "2s"\nhealth_interval = "2s"\n\n'
        '[[origin]]\nurl = "sftp://music@nas/srv/music"\nname = "nas"\n'
        f'key_file = "{secrets}/id_ed25519"\nknown_hosts = "{secrets}/known_hosts"\n'
    )
    nas = world.machine("nas")
    client = world.machine("client", config=config)
    world.run(
        "sftp_outage",
        client=client,
        nas=nas,
        subtest=subtest,
        library="/srv/long",
        secrets=secrets,
        deadline=3,
    )


def test_requires_mounts_for_quoting_as_the_module_renders_it(world: World) -> None:
    """nixos/module.nix quotes RequiresMountsFor= (JSON) and doubles %, as checked by
    scripts/eval-nixos-module.sh; real systemd must read that back as the one path."""
    parent = "/srv/My Music 100% $HOME"
    rendered = json.dumps(parent).replace("%", "%%")
    machine = world.machine("machine")
    machine.start()
    machine.succeed(
        "printf '%s\\n' '[Unit]' "
        + shlex.quote(f"RequiresMountsFor={rendered}")
        + " '[Service]' 'ExecStart=/bin/true' > /run/systemd/system/quoting.service",
        "systemctl daemon-reload",
    )
    # systemctl show prints the paths shell-quoted (with $ escaped): let the shell read them.
    shown = machine.succeed(
        'eval "set -- $(systemctl show -P RequiresMountsFor quoting.service)";'
        " printf '%s\\n' \"$@\""
    )
    assert shown.splitlines() == [parent], f"systemd read {shown!r} from {rendered!r}"
