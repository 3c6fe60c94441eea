"""The ``openssh`` transport: each connection is an ``ssh -s <host> sftp`` process -- what
sshfs runs -- and asyncssh's SFTP client speaks the SFTP protocol over its stdin/stdout
(``sftp_pipe``). SSH's crypto and framing run in ssh, beside the daemon, not on it.

ssh is told exactly what the asyncssh transport does: the origin's known_hosts only
(``StrictHostKeyChecking=yes``; ``accept-new`` with ``trust_on_first_use``), keys only and
never a prompt (``BatchMode=yes``), keepalives, the origin's ``key_file`` alone when one is
set, and ``-F`` the very config file ``ssh_config`` resolved the host with. ProxyJump
hops become a ProxyCommand chain of the same ssh, so each hop is verified against the same
known_hosts and never trusted on first use, and writes its own log: a failure is blamed on
the hop it happened at. A multiplexing master from the user's config is never used.

What ssh prints when it fails is read back into a ``ConnectFailure`` (``_classify``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import asyncssh

from musicfs.origins.settings import OriginSettings
from musicfs.origins.sftp_errors import Cause, ConnectFailure
from musicfs.origins.sftp_hostkeys import HostKeys
from musicfs.origins.sftp_pipe import PipeProcess, start_sftp_over
from musicfs.origins.sftp_transport import LostCallback
from musicfs.origins.ssh_config import Hop, SSHEndpoint
from musicfs.origins.urls import SFTPAddress

log = logging.getLogger(__name__)

# AES-GCM ahead of ssh's own default order (chacha20-poly1305 first): with AES-NI it costs
# ssh a fraction of the CPU per byte, and that CPU is taken from the same two cores.
CIPHERS_FIRST = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"
# (text ssh prints, cause) in the order they are looked for: the first match decides.
_MESSAGES = (
    ("host key verification failed", Cause.HOST_KEY_UNKNOWN),
    ("load key", Cause.BAD_KEY),
    ("permission denied", Cause.AUTH),
    ("too many authentication failures", Cause.AUTH),
    ("could not resolve hostname", Cause.RESOLVE),
    ("connection refused", Cause.REFUSED),
    ("timed out", Cause.TIMEOUT),
    ("no route to host", Cause.OTHER),
    ("network is unreachable", Cause.OTHER),
)
_ERRNOS = {"no route to host": errno.EHOSTUNREACH, "network is unreachable": errno.ENETUNREACH}


def _quoted(path: Path) -> str:
    # ssh splits an -o value at whitespace unless it is in double quotes.
    return f'"{path}"'


class OpenSSHSession:
    def __init__(self, process: PipeProcess, sftp: asyncssh.SFTPClient, hops: Sequence[Hop]):
        self.process = process
        self._sftp = sftp
        self._hops = tuple(hops)

    @property
    def sftp(self) -> asyncssh.SFTPClient:
        return self._sftp

    @property
    def tunnels(self) -> Sequence[object]:
        return self._hops

    def is_closed(self) -> bool:
        return self.process.exited()

    def abort(self) -> None:
        self.process.kill()

    async def wait_closed(self) -> None:
        await self.process.wait()


class OpenSSHTransport:
    name = "openssh"

    def __init__(
        self, address: SFTPAddress, settings: OriginSettings, timeout: float, host_keys: HostKeys
    ):
        # What the URL says; ssh applies the config's block for the host itself.
        self.user, self.port, self.host = address.user, address.port, address.host
        self.settings = settings
        self.timeout = timeout
        self.host_keys = host_keys
        self.ssh = shutil.which("ssh") or "ssh"

    # -- the command ---------------------------------------------------------------------

    def _common(self, config: Sequence[Path], *, first_use: bool) -> list[str]:
        """Options every ssh of a connection gets, the hops' included."""
        interval = max(1, math.ceil(self.timeout))
        options = [
            "BatchMode=yes",
            "PreferredAuthentications=publickey",
            f"StrictHostKeyChecking={'accept-new' if first_use else 'yes'}",
            f"UserKnownHostsFile={_quoted(self.host_keys.path)}",
            "GlobalKnownHostsFile=/dev/null",
            "HashKnownHosts=no",
            "UpdateHostKeys=no",
            "CheckHostIP=no",
            f"ConnectTimeout={interval}",
            # A silent peer is declared dead after ~2 intervals without an answer.
            f"ServerAliveInterval={interval}",
            "ServerAliveCountMax=2",
            f"Ciphers={CIPHERS_FIRST}",
            "ControlMaster=no",
            "ControlPath=none",
            "ClearAllForwardings=yes",
            "ForwardAgent=no",
            "ForwardX11=no",
            "PermitLocalCommand=no",
            "RequestTTY=no",
            "LogLevel=ERROR",
        ]
        # Exactly the config file ssh_config.py resolved the host with (ssh would look
        # for ~/.ssh/config in the passwd entry's home, not $HOME's); "none": there is none.
        args = [self.ssh, "-x", "-a", "-F", str(config[0]) if config else "none"]
        for option in options:
            args += ["-o", option]
        return args

    def _hop(self, hops: Sequence[Hop], config: Sequence[Path], i: int, logs: Path) -> str:
        """The ProxyCommand reaching through ``hops[:i+1]`` (``%h:%p``: the next host)."""
        hop = hops[i]
        args = [*self._common(config, first_use=False), "-E", str(logs / f"hop{i}.log")]
        if i > 0:
            # Its own %-tokens are the next ssh's to expand, the inner ones escaped once.
            args += [
                "-o",
                "ProxyCommand=" + self._hop(hops, config, i - 1, logs).replace("%", "%%"),
            ]
        if hop.user:
            args += ["-l", hop.user]
        if hop.port is not None:
            args += ["-p", str(hop.port)]
        args += ["-W", "%h:%p", hop.host]
        # (run by sh -c "exec ..."): it logs to its file, and must not hold the stderr of
        # the ssh it serves open after that one exits.
        return shlex.join(args) + " 2>/dev/null"

    def command(self, endpoint: SSHEndpoint, logs: Path) -> list[str]:
        first_use = self.settings.trust_on_first_use
        args = self._common(endpoint.config, first_use=first_use)
        if self.settings.key_file is not None:
            args += ["-i", str(self.settings.key_file.expanduser())]
            args += ["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"]
        if endpoint.jumps:
            args += [
                "-o",
                "ProxyCommand="
                + self._hop(endpoint.jumps, endpoint.config, len(endpoint.jumps) - 1, logs),
            ]
        if self.user:
            args += ["-l", self.user]
        if self.port is not None:
            args += ["-p", str(self.port)]
        return [*args, "-s", self.host, "sftp"]

    # -- connecting ----------------------------------------------------------------------

    async def connect(self, endpoint: SSHEndpoint, on_lost: LostCallback) -> OpenSSHSession:
        if shutil.which(self.ssh) is None:
            raise self.host_keys.errors.err(
                errno.EINVAL,
                "transport = openssh needs OpenSSH's ssh client, which is not installed "
                "(or not on PATH); install it or set transport = asyncssh",
                origin_wide=True,
            )
        # Inline, as every small local file here: this loop is the origin's own thread.
        _, host_known = self.host_keys.load(endpoint)
        self.host_keys.prepare()
        logs = Path(tempfile.mkdtemp(prefix="musicfs-ssh-"))
        process: PipeProcess | None = None
        try:
            process = await PipeProcess.start(self.command(endpoint, logs))
            try:
                async with asyncio.timeout(self.timeout):  # (wait_for would add a task)
                    sftp = await start_sftp_over(process)
            except Exception as exc:
                failure = await self._failure(process, endpoint, host_known, logs, exc)
                raise failure from None
        except BaseException:
            if process is not None:
                process.kill()
            raise
        finally:
            # A hop's ssh keeps writing to its (then unlinked) log: nothing is read later.
            shutil.rmtree(logs, ignore_errors=True)
        session = OpenSSHSession(process, sftp, endpoint.jumps)
        process.on_exit(lambda why: on_lost(session, why))
        if not host_known and self.settings.trust_on_first_use:
            self.host_keys.trusted(endpoint, None)
        return session

    async def _failure(
        self,
        process: PipeProcess,
        endpoint: SSHEndpoint,
        host_known: bool,
        logs: Path,
        exc: BaseException,
    ) -> ConnectFailure:
        """Why the connect failed, from what ssh (and each hop's ssh) printed."""
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            process.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 2)
        for i, hop in enumerate(endpoint.jumps):
            text = _read_quietly(logs / f"hop{i}.log")
            failure = _classify(text)
            if failure is not None:
                failure.hop = hop
                return failure
        failure = _classify(process.stderr_text())
        if failure is not None:
            if failure.cause is Cause.HOST_KEY_UNKNOWN and host_known:
                failure.cause = Cause.HOST_KEY_CHANGED
            return failure
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            return ConnectFailure(Cause.TIMEOUT)
        said = process.stderr_text().strip().splitlines()
        detail = said[-1] if said else f"{exc} (ssh exit status {process.returncode})"
        return ConnectFailure(Cause.RESET if process.exited() else Cause.OTHER, detail)


def _read_quietly(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _classify(text: str) -> ConnectFailure | None:
    lower = text.lower()
    for needle, cause in _MESSAGES:
        if needle in lower:
            line = next((ln.strip() for ln in text.splitlines() if needle in ln.lower()), needle)
            return ConnectFailure(cause, line, errno=_ERRNOS.get(needle, 0))
    return None
