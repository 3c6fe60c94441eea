"""Layer markers and the rule that CI fails -- never skips -- when a layer cannot run."""

from __future__ import annotations

import os

import pytest

from musicfs import failpoints

REQUIRE_ALL = os.environ.get("MUSICFS_REQUIRE_ALL_LAYERS") == "1"
# A normal user's `make test` runs as root of a user namespace
# (scripts/test-as-namespace-root.sh): the few tests that need the host's own root cannot
# run there, and are left out by name -- the run says which -- rather than skipped.
IN_USER_NAMESPACE = os.environ.get("MUSICFS_IN_TEST_NAMESPACE") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = str(item.fspath)
        if "/tests/process/" in path:
            item.add_marker(pytest.mark.process)
        elif "/tests/network/" in path:
            item.add_marker(pytest.mark.network)
        elif "/tests/e2e/" in path:
            # Real players on real mounts: layer 2 as well, so a layer-1 run leaves them out.
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.process)
    if IN_USER_NAMESPACE:
        host_root = [item for item in items if item.get_closest_marker("host_root")]
        if host_root:
            config.hook.pytest_deselected(items=host_root)
            items[:] = [item for item in items if item not in host_root]
            config.stash[_HOST_ROOT] = [item.nodeid for item in host_root]


_HOST_ROOT = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    left_out = config.stash.get(_HOST_ROOT, [])
    if left_out:
        terminalreporter.write_line(
            f"{len(left_out)} test(s) need the host's root and did not run in this user "
            "namespace (`sudo make test` runs them): " + ", ".join(left_out),
            yellow=True,
        )
    skipped = terminalreporter.stats.get("skipped", [])
    if REQUIRE_ALL and skipped:
        terminalreporter.write_line(
            f"MUSICFS_REQUIRE_ALL_LAYERS=1 but {len(skipped)} test(s) were skipped: failing",
            red=True,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if REQUIRE_ALL and reporter is not None and reporter.stats.get("skipped"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _no_failpoints_leak():
    failpoints.clear()
    yield
    failpoints.clear()
