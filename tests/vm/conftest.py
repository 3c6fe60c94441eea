"""tests/vm run only when asked for (`make vm-test`, MUSICFS_VM_TEST=1): each boots Debian
machines under systemd, which is the VM part of CI, not of every pytest run (nor of the
Nix package's checkPhase)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.world import build_layer, build_rootfs

ENABLED = os.environ.get("MUSICFS_VM_TEST") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ENABLED:
        return
    here = str(Path(__file__).parent)
    vm = [item for item in items if str(item.fspath).startswith(here)]
    if vm:
        config.hook.pytest_deselected(items=vm)
        items[:] = [item for item in items if item not in vm]


@pytest.fixture(scope="session")
def vm_lowers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Path]]:
    if os.geteuid() != 0:
        pytest.fail("tests/vm boot containers: they need root")
    rootfs = build_rootfs()
    layer = build_layer(rootfs, tmp_path_factory.mktemp("vm-layer"))
    yield [layer, rootfs]
