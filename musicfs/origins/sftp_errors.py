"""What an SFTP origin's failures tell the caller: one ``OriginError`` per cause, with the
errno a caller acts on and a message that says what to do.

Both transports (``sftp_asyncssh``, ``sftp_openssh``) report a failed connect as a
``ConnectFailure`` -- a cause, not a transport's own exception -- so the messages are the
same whichever one ran, and the pool maps what an SFTP request raised (``request_error``).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import asyncssh

from musicfs.origins.base import OriginError
from musicfs.origins.ssh_config import Hop, SSHEndpoint

# What asyncssh raises when a request meets an SFTP session that has ended: already
# closed (the request was never sent), or closed by the server's end of the channel while
# the SSH connection itself stayed up. (A lost connection raises ConnectionLost instead.)
SESSION_ENDED = (asyncssh.SFTPNoConnection, asyncssh.SFTPConnectionLost)


class Cause(Enum):
    HOST_KEY_UNKNOWN = "host key not in known_hosts"
    HOST_KEY_CHANGED = "host key changed"
    AUTH = "authentication failed"
    BAD_KEY = "key file unusable"
    RESOLVE = "host name does not resolve"
    TIMEOUT = "no answer"
    REFUSED = "connection refused"
    RESET = "connection dropped"
    OTHER = "other"


@dataclass
class ConnectFailure(Exception):
    """A connect that failed for ``cause``; ``hop`` is the ProxyJump host it failed at
    (None: the server itself), ``detail`` what the transport said."""

    cause: Cause
    detail: str = ""
    hop: Hop | None = None
    errno: int = 0  # for Cause.OTHER: the OS error, when there is one

    def __str__(self) -> str:
        return f"{self.cause.value}: {self.detail}"


def known_hosts_pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def classify(exc: BaseException) -> ConnectFailure:
    """The cause of an exception a connect attempt raised (asyncssh's, the socket's)."""
    if isinstance(exc, ConnectFailure):
        return exc
    if isinstance(exc, asyncssh.PermissionDenied):
        return ConnectFailure(Cause.AUTH, str(exc))
    if isinstance(exc, asyncssh.KeyImportError | asyncssh.KeyEncryptionError):
        return ConnectFailure(Cause.BAD_KEY, str(exc))
    if isinstance(exc, socket.gaierror):
        return ConnectFailure(Cause.RESOLVE, exc.strerror or str(exc))
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return ConnectFailure(Cause.TIMEOUT)
    if isinstance(exc, ConnectionRefusedError):
        return ConnectFailure(Cause.REFUSED)
    if isinstance(exc, ConnectionError):
        # EPIPE / ECONNABORTED / ECONNRESET: the server dropped the connection while it
        # was being set up (it is going down) -- to a caller, a reset connection.
        return ConnectFailure(Cause.RESET, exc.strerror or str(exc))
    if isinstance(exc, OSError) and exc.errno:
        return ConnectFailure(Cause.OTHER, exc.strerror or str(exc), errno=exc.errno)
    if isinstance(exc, asyncssh.Error):
        return ConnectFailure(Cause.RESET, f"SSH connection failed: {exc}")
    return ConnectFailure(Cause.OTHER, repr(exc))


@dataclass
class ErrorReporter:
    """Builds an origin's errors; ``endpoint`` is kept current by each connect."""

    origin: str
    endpoint: SSHEndpoint
    known_hosts: Path
    key_file: Path | None
    timeout: float

    def err(
        self, err: int, message: str, path: str | None = None, *, origin_wide: bool = False
    ) -> OriginError:
        return OriginError(err, message, origin=self.origin, path=path, origin_wide=origin_wide)

    def where(self, hop: Hop | None = None) -> str:
        here = self.endpoint.where()
        return here if hop is None else f"jump host {hop} (ProxyJump of {here})"

    def connect_error(self, exc: BaseException) -> OriginError:
        if isinstance(exc, OriginError):
            return exc
        failure = classify(exc)
        where = self.where(failure.hop)
        cause = failure.cause
        if cause is Cause.HOST_KEY_CHANGED:
            pattern = known_hosts_pattern(self.endpoint.key_name, self.endpoint.port)
            return self.err(
                errno.EACCES,
                f"host key of {where} does not match the one in {self.known_hosts}: "
                "REFUSED (the server was reinstalled, or someone is intercepting the "
                "connection; if the change is expected, remove the old line with "
                f"ssh-keygen -R {pattern} -f {self.known_hosts})",
                origin_wide=True,
            )
        if cause is Cause.HOST_KEY_UNKNOWN:
            return self.err(
                errno.EACCES,
                f"host key of {where} is not in {self.known_hosts}: REFUSED (add it with "
                f"ssh-keyscan, or set trust_on_first_use = true to accept it once)",
                origin_wide=True,
            )
        if cause is Cause.AUTH:
            how = (
                f"key {self.key_file}"
                if self.key_file and failure.hop is None
                else f"the IdentityFile of {self.endpoint.config[0]} / SSH agent / default keys"
                if self.endpoint.config
                else "SSH agent / default keys"
            )
            return self.err(
                errno.EACCES, f"authentication to {where} failed with {how}", origin_wide=True
            )
        if cause is Cause.BAD_KEY:
            return self.err(
                errno.EINVAL,
                f"cannot use key file {self.key_file}: {failure.detail} (encrypted keys "
                "need an SSH agent)",
                origin_wide=True,
            )
        if cause is Cause.RESOLVE:
            host = failure.hop.host if failure.hop else self.endpoint.host
            return self.err(errno.EHOSTUNREACH, f"cannot resolve host {host!r}: {failure.detail}")
        if cause is Cause.TIMEOUT:
            return self.err(errno.ETIMEDOUT, f"no answer from {where} within {self.timeout:g}s")
        if cause is Cause.REFUSED:
            return self.err(errno.ECONNREFUSED, f"connection to {where} refused")
        if cause is Cause.RESET:
            return self.err(
                errno.ECONNRESET, f"connection to {where} dropped during set-up: {failure.detail}"
            )
        if failure.errno:
            return self.err(failure.errno, f"cannot connect to {where}: {failure.detail}")
        return self.err(errno.EIO, f"cannot connect to {where}: {failure.detail}")

    def request_error(self, exc: BaseException, path: str | None) -> tuple[OriginError, bool]:
        """What an SFTP request's failure means, and whether its connection is in doubt
        (then dropped, so the next call reconnects)."""
        if isinstance(exc, OriginError):
            return exc, False
        if isinstance(exc, asyncssh.SFTPConnectionLost):
            return self.err(errno.ECONNRESET, f"connection lost: {exc.reason}", path), True
        if isinstance(exc, asyncssh.SFTPNoConnection):
            return self.err(
                errno.ECONNRESET, f"connection already closed: {exc.reason}", path
            ), True
        if isinstance(exc, asyncssh.SFTPNoSuchFile):
            return self.err(errno.ENOENT, "no such file on the server", path), False
        if isinstance(exc, asyncssh.SFTPPermissionDenied):
            return self.err(errno.EACCES, "permission denied by the server", path), False
        if isinstance(exc, asyncssh.SFTPError):
            return self.err(errno.EIO, f"server error: {exc.reason}", path), False
        # Anything else means the connection is in doubt.
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return self.err(errno.ETIMEDOUT, f"no answer within {self.timeout:g}s", path), True
        if isinstance(exc, asyncssh.ConnectionLost | asyncssh.DisconnectError | ConnectionError):
            return self.err(errno.ECONNRESET, f"connection lost: {exc}", path), True
        if isinstance(exc, OSError) and exc.errno:
            return self.err(exc.errno, str(exc), path), True
        return self.err(errno.EIO, f"unexpected: {exc!r}", path), True
