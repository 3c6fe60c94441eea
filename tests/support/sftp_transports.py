"""Every SFTP network test runs once per transport (``origins/sftp_transport.py``): a test
module imports ``transport`` (an autouse, parametrized fixture) and builds its origins with
``current_transport()``, so helpers that make origins need no transport argument."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

TRANSPORTS = ("openssh", "asyncssh")
_current = [TRANSPORTS[0]]


def current_transport() -> str:
    """The transport the running test is parametrized with."""
    return _current[0]


@pytest.fixture(autouse=True, params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Iterator[str]:
    _current[0] = request.param
    yield request.param
    _current[0] = TRANSPORTS[0]
