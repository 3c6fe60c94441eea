"""Layer 1: what a failed SFTP connection attempt tells the caller -- errno by cause,
without any network (the real server cases are in tests/network/test_sftp_origin.py)."""

from __future__ import annotations

import errno

import pytest

from musicfs.config import OriginSettings, OriginTimeouts
from musicfs.origins.sftp import SFTPOrigin
from musicfs.origins.urls import parse_sftp


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), errno.ECONNREFUSED),
        # A server going down resets the handshake; whichever of these the socket reports,
        # the caller sees a reset connection, as for any connection the server drops.
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), errno.ECONNRESET),
        (ConnectionAbortedError(errno.ECONNABORTED, "Software caused"), errno.ECONNRESET),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), errno.ECONNRESET),
        (TimeoutError(), errno.ETIMEDOUT),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), errno.ENETUNREACH),
    ],
)
def test_connect_errors_map_to_a_connection_errno(raised: OSError, expected: int) -> None:
    url = "sftp://music@nas.lan:2222/srv/music"
    origin = SFTPOrigin(
        "nas", parse_sftp(url), OriginSettings(url=url, name="nas"), OriginTimeouts()
    )
    err = origin.errors.connect_error(raised)
    assert err.errno == expected, err
    assert err.origin == "nas" and "nas.lan:2222" in str(err)
