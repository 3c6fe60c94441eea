"""The known_hosts file an SFTP origin verifies host keys against (``known_hosts``,
default ``~/.ssh/known_hosts``), the same file whichever transport connects.

An unknown or changed key is refused; only ``trust_on_first_use`` lets an unknown host's
key be recorded (a changed key is refused even then), and recording it is logged with its
fingerprint. ProxyJump hosts are verified against the same file and never trusted on
first use.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import asyncssh

from musicfs.origins.sftp_errors import ErrorReporter, known_hosts_pattern
from musicfs.origins.ssh_config import SSHEndpoint

log = logging.getLogger(__name__)


class HostKeys:
    def __init__(self, path: Path, trust_on_first_use: bool, errors: ErrorReporter):
        self.path = path
        self.trust_on_first_use = trust_on_first_use
        self.errors = errors

    def load(self, endpoint: SSHEndpoint) -> tuple[asyncssh.SSHKnownHosts, bool]:
        """The known_hosts file and whether it lists ``endpoint``'s host at all. Blocking
        (a small local file, read once per connection so edits apply at once)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            if not self.trust_on_first_use:
                raise self.errors.err(
                    errno.EACCES,
                    f"known_hosts file {self.path} does not exist, so the host key of "
                    f"{endpoint.where()} cannot be verified; add it (ssh-keyscan -p "
                    f"{endpoint.port} {endpoint.host} >> {self.path}) or set "
                    "trust_on_first_use = true",
                    origin_wide=True,
                ) from None
            text = ""
        except OSError as exc:
            raise self.errors.err(
                errno.EACCES,
                f"cannot read known_hosts file {self.path}: {exc}",
                origin_wide=True,
            ) from None
        known = asyncssh.import_known_hosts(text)
        return known, self.lists(known, endpoint.key_name, endpoint.port)

    @staticmethod
    def lists(known: asyncssh.SSHKnownHosts, name: str, port: int) -> bool:
        keys = known.match(name, "", port)
        return bool(keys[0] or keys[1])

    def prepare(self) -> None:
        """The folder a first-use key is written into exists (ssh does not create it)."""
        if self.trust_on_first_use:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)

    def record(self, endpoint: SSHEndpoint, key: asyncssh.SSHKey) -> None:
        """Append a key trusted on first use, durably, and say so."""
        line = key.export_public_key("openssh").decode().split()[:2]
        entry = f"{known_hosts_pattern(endpoint.key_name, endpoint.port)} {' '.join(line)}"
        self.prepare()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (entry + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.trusted(endpoint, key)

    def trusted(self, endpoint: SSHEndpoint, key: asyncssh.SSHKey | None) -> None:
        """Log that ``endpoint``'s key (``key``, else the one the file now lists for it --
        ssh recorded it) is now trusted."""
        if key is None:
            known, _ = self.load(endpoint)
            found = known.match(endpoint.key_name, "", endpoint.port)[0]
            key = found[0] if found else None
        log.warning(
            "sftp: origin=%s: host key %s of %s was not known and is now trusted "
            "(trust_on_first_use); recorded in %s",
            self.errors.origin,
            key.get_fingerprint() if key is not None else "?",
            endpoint.where(),
            self.path,
        )
