"""How an SFTP origin's SSH connections are made: the ``transport`` setting.

* ``openssh``: each connection is an OpenSSH ``ssh -s <host> sftp`` process, exactly as
  sshfs runs it, with asyncssh's SFTP client speaking over its stdin/stdout
  (``sftp_openssh``). SSH's crypto and packet framing run in that process, not on the
  daemon's interpreter -- measured with a bare client reading 169 MB cold from a
  loopback sshd: 0.85-0.91 s of CPU per GB in the client's own process against
  1.41-1.53 s with asyncssh's SSH -- and ssh applies the config file itself.
* ``asyncssh`` (the default): asyncssh does SSH as well, in the daemon
  (``sftp_asyncssh``).

Why asyncssh stays the default: in the cold-path bench (``python -m bench cold`` with
``MUSICFS_BENCH_COLD_ONLY=start MUSICFS_BENCH_TRANSPORTS=openssh,asyncssh``, 2 shared
cores, load 2-5) neither was faster end to end -- first byte 9.97 against 7.87 ms and
1 MiB reads 87 against 94 MB/s in one run, 10.0 against 11.7 ms and 88 against 91 MB/s
in another -- and at the origin alone (``python -m bench sftp_origin``, three runs at
load 4.6-5.8) a cold open + 128 KiB took 0.91-1.28x asyncssh's time and two 1 MiB reads
in flight 0.94-1.33x, while the reading process spent 0.71-0.80x the CPU per GB and a
warm request's round trip 0.86-0.93x the time: the ssh process saves the daemon's CPU
but is one more process to wake per answer on the same two cores. Where the daemon's
CPU is what runs out, ``openssh`` is the one to choose.

Either way the host key is checked against the origin's ``known_hosts`` only, keys are
the only authentication (never a password prompt), and every failure reads the same
(``sftp_errors``). A connection is a ``Session``: the SFTP client on it, and a way to
tear it down; a transport calls ``on_lost`` once when a session it handed out dies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import asyncssh

from musicfs.origins.settings import SFTP_TRANSPORTS
from musicfs.origins.ssh_config import SSHEndpoint


class Session(Protocol):
    @property
    def sftp(self) -> asyncssh.SFTPClient: ...

    @property
    def tunnels(self) -> Sequence[object]:
        """The ProxyJump hops the connection runs through, the first one first."""
        ...

    def is_closed(self) -> bool: ...

    def abort(self) -> None: ...

    async def wait_closed(self) -> None: ...


LostCallback = Callable[[Session, str], None]


class Transport(Protocol):
    name: str

    async def connect(self, endpoint: SSHEndpoint, on_lost: LostCallback) -> Session:
        """A new session to ``endpoint``; raises ``ConnectFailure``/``OriginError`` (or
        what asyncssh and the socket raise, which ``sftp_errors.classify`` maps)."""
        ...


def chosen(setting: str) -> str:
    """``setting``, checked."""
    if setting not in SFTP_TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(SFTP_TRANSPORTS)}, not {setting!r}")
    return setting
