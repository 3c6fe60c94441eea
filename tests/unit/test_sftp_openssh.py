"""Layer 1: the ssh command line of the ``openssh`` transport and how what ssh prints is
read back as a cause (the real server cases: tests/network/test_sftp_origin.py and
test_ssh_config.py, run with each transport)."""

from __future__ import annotations

import errno
import shlex
from pathlib import Path

import pytest

from musicfs.config import OriginSettings, OriginTimeouts
from musicfs.origins.sftp import SFTPOrigin
from musicfs.origins.sftp_errors import Cause
from musicfs.origins.sftp_openssh import OpenSSHTransport, _classify
from musicfs.origins.ssh_config import Hop, SSHEndpoint
from musicfs.origins.urls import parse_sftp


def _transport(tmp_path: Path, url: str, **settings: object) -> OpenSSHTransport:
    known = tmp_path / "known hosts"  # a space: ssh must get it quoted
    s = OriginSettings(url=url, name="nas", known_hosts=known, transport="openssh", **settings)  # type: ignore[arg-type]
    origin = SFTPOrigin("nas", parse_sftp(url), s, OriginTimeouts(operation=5))
    assert isinstance(origin.transport, OpenSSHTransport)
    return origin.transport


def _options(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "-o")


def test_the_command_verifies_host_keys_never_prompts_and_uses_only_the_key(
    tmp_path: Path,
) -> None:
    key = tmp_path / "id"
    t = _transport(tmp_path, "sftp://music@nas.lan:2222/srv", key_file=key)
    endpoint = SSHEndpoint("nas.lan", "nas.lan", 2222, "music", "nas.lan", (), ())
    argv = t.command(endpoint, tmp_path)
    options = _options(argv)
    assert argv[-3:] == ["-s", "nas.lan", "sftp"]
    assert options["BatchMode"] == "yes" and options["StrictHostKeyChecking"] == "yes"
    assert options["UserKnownHostsFile"] == f'"{tmp_path / "known hosts"}"'
    assert options["GlobalKnownHostsFile"] == "/dev/null"
    assert options["IdentitiesOnly"] == "yes" and options["IdentityAgent"] == "none"
    assert options["ControlMaster"] == "no" and "ProxyCommand" not in options
    assert argv[argv.index("-i") + 1] == str(key)
    assert argv[argv.index("-l") + 1] == "music" and argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-F") + 1] == "none"  # no config file: none read, as asyncssh
    first_use = _transport(tmp_path, "sftp://nas.lan/srv", trust_on_first_use=True)
    argv = first_use.command(endpoint, tmp_path)
    assert _options(argv)["StrictHostKeyChecking"] == "accept-new"
    assert "-i" not in argv and "-l" not in argv and "-p" not in argv  # ssh's own defaults


def test_proxyjump_hops_become_a_chain_each_verified_and_logged(tmp_path: Path) -> None:
    t = _transport(tmp_path, "sftp://nas/srv", trust_on_first_use=True)
    config = tmp_path / "config"
    endpoint = SSHEndpoint(
        "nas", "10.0.0.9", 22, None, "10.0.0.9", (Hop("a", "u", 2200), Hop("b")), (config,)
    )
    argv = t.command(endpoint, tmp_path)
    assert argv[argv.index("-F") + 1] == str(config)
    outer = shlex.split(_options(argv)["ProxyCommand"])
    # The last hop is reached through the first; its own tokens are for ssh to expand,
    # the first hop's escaped once more (it is expanded one ssh further in).
    assert outer[-4:] == ["-W", "%h:%p", "b", "2>/dev/null"]
    hop_b = _options(outer[:-1])
    assert hop_b["StrictHostKeyChecking"] == "yes"  # never trusted on first use
    assert outer[outer.index("-E") + 1] == str(tmp_path / "hop1.log")
    inner = shlex.split(hop_b["ProxyCommand"])
    assert inner[-4:] == ["-W", "%%h:%%p", "a", "2>/dev/null"]
    assert inner[inner.index("-l") + 1] == "u" and inner[inner.index("-p") + 1] == "2200"
    assert inner[inner.index("-E") + 1] == str(tmp_path / "hop0.log")


@pytest.mark.parametrize(
    ("printed", "cause", "err"),
    [
        ("Host key verification failed.", Cause.HOST_KEY_UNKNOWN, 0),
        ("nobody@10.0.0.2: Permission denied (publickey).", Cause.AUTH, 0),
        (
            'Load key "/k": invalid format\nnobody@h: Permission denied (publickey).',
            Cause.BAD_KEY,
            0,
        ),
        ("ssh: Could not resolve hostname nas: Name or service not known", Cause.RESOLVE, 0),
        ("ssh: connect to host 10.0.0.2 port 2222: Connection refused", Cause.REFUSED, 0),
        ("ssh: connect to host 10.0.0.2 port 22: Connection timed out", Cause.TIMEOUT, 0),
        (
            "ssh: connect to host 10.0.0.2 port 22: No route to host",
            Cause.OTHER,
            errno.EHOSTUNREACH,
        ),
    ],
)
def test_what_ssh_prints_is_read_as_a_cause(printed: str, cause: Cause, err: int) -> None:
    failure = _classify(printed)
    assert failure is not None and failure.cause is cause and failure.errno == err


def test_unrecognised_output_is_no_cause() -> None:
    assert _classify("kex_exchange_identification: read: Connection reset") is None


def test_without_an_ssh_client_the_error_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from musicfs.origins.base import OriginError

    monkeypatch.setenv("PATH", str(tmp_path))  # no ssh on it
    t = _transport(tmp_path, "sftp://nas.lan/srv")
    endpoint = SSHEndpoint("nas.lan", "nas.lan", 22, None, "nas.lan", (), ())
    with pytest.raises(OriginError) as info:
        asyncio.run(t.connect(endpoint, lambda session, why: None))
    assert info.value.errno == errno.EINVAL and info.value.origin_wide
    assert "transport = asyncssh" in str(info.value)
