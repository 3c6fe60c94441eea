"""Layer 3: ``sftp://nas/...`` where ``nas`` is a ``Host`` alias in ``~/.ssh/config`` -- its
HostName, Port, User, IdentityFile, IdentitiesOnly and a ProxyJump through a second sshd
in another namespace, the NAS itself reachable only from the jump host -- with both host
keys still verified against known_hosts, with each transport (``openssh``, ``asyncssh``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from musicfs.config import OriginSettings, OriginTimeouts
from musicfs.origins.base import OriginError
from musicfs.origins.open import open_origin
from musicfs.origins.sftp import SFTPOrigin
from tests.support.netns import NetNS, SSHServer, sshd_binary
from tests.support.sftp_transports import current_transport, transport  # noqa: F401

pytestmark = pytest.mark.network

# The link between the jump host's namespace and the NAS's: no route from this host.
JUMP_SIDE, NAS_SIDE = "192.168.231.1", "192.168.231.2"
NAS_PORT = 2222
WAIT_FOR_PORT = """
import socket, sys, time
for _ in range(200):
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(1)
"""


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def jump_and_nas(world_dir: Path) -> Iterator[tuple[SSHServer, SSHServer]]:
    with NetNS() as jump_ns, NetNS() as nas_ns:
        a, b = f"mj{os.getpid()}"[:15], f"mk{os.getpid()}"[:15]
        _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        _run("ip", "link", "set", a, "netns", jump_ns.name)
        _run("ip", "link", "set", b, "netns", nas_ns.name)
        jump_ns.exec("ip", "addr", "add", f"{JUMP_SIDE}/30", "dev", a)
        jump_ns.exec("ip", "link", "set", a, "up")
        nas_ns.exec("ip", "addr", "add", f"{NAS_SIDE}/30", "dev", b)
        nas_ns.exec("ip", "link", "set", b, "up")
        # The NAS answers only over that link: what comes from this host is dropped.
        nas_ns.exec("nft", "add", "table", "inet", "mfs_only_jump")
        nas_ns.exec(
            "nft",
            "add chain inet mfs_only_jump input { type filter hook input priority -10 ; "
            "policy accept ; }",
        )
        nas_ns.exec(
            "nft", "add", "rule", "inet", "mfs_only_jump", "input", "iifname", nas_ns.ns_if,
            "tcp", "dport", str(NAS_PORT), "drop",
        )  # fmt: skip
        jump = SSHServer(jump_ns, world_dir, user="root").start()
        nas = SSHServer(nas_ns, world_dir, user="nobody", port=NAS_PORT)
        nas.proc = nas_ns.popen(sshd_binary(), "-D", "-e", "-f", str(nas.config), log=nas.log)
        jump_ns.exec(sys.executable, "-c", WAIT_FOR_PORT, NAS_SIDE, str(NAS_PORT))
        yield jump, nas


def _library(root: Path) -> Path:
    lib = root / "lib" / "album"
    lib.mkdir(parents=True)
    (lib / "01.flac").write_bytes(b"through the jump host" * 1000)
    for p in [root / "lib", lib]:
        os.chmod(p, 0o755)
    return root / "lib"


def _home(
    world_dir: Path, jump: SSHServer, nas: SSHServer, monkeypatch: pytest.MonkeyPatch
) -> Path:
    home = world_dir / "home"
    ssh = home / ".ssh"
    ssh.mkdir(parents=True)
    (ssh / "config").write_text(
        "Host jumpbox\n"
        f"    HostName {jump.ns.ip}\n"
        "    User root\n"
        f"    IdentityFile {jump.client_key}\n"
        "    IdentitiesOnly yes\n"
        "\n"
        "Host nas\n"
        f"    HostName {NAS_SIDE}\n"
        f"    Port {NAS_PORT}\n"
        "    User nobody\n"
        f"    IdentityFile {nas.client_key}\n"
        "    IdentitiesOnly yes\n"
        "    ProxyJump jumpbox\n"
    )
    (ssh / "known_hosts").write_text(
        f"{jump.ns.ip} {jump.public_host_key()}\n[{NAS_SIDE}]:{NAS_PORT} {nas.public_host_key()}\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)  # only the config's keys
    return home


def _origin(url: str, **settings: object) -> SFTPOrigin:
    settings.setdefault("transport", current_transport())
    o = open_origin(
        url,
        "nas",
        OriginSettings(url=url, name="nas", **settings),  # type: ignore[arg-type]
        OriginTimeouts(operation=5.0),
    )
    assert isinstance(o, SFTPOrigin)
    return o


def _read_all(o: SFTPOrigin) -> tuple[list[str], bytes, int]:
    """The listing, the track's bytes, and how many ProxyJump hops the connection used."""

    async def main() -> tuple[list[str], bytes, int]:
        try:
            listing = await o.list()
            data = await o.read("album/01.flac", 0, 1 << 20)
            hops = max(len(slot.tunnels) for slot in o._slots)
            return sorted(e.path for e in listing.entries), data, hops
        finally:
            await o.aclose()

    return trio.run(main)


def _error(o: SFTPOrigin) -> OriginError:
    async def main() -> OriginError:
        try:
            with pytest.raises(OriginError) as info:
                await o.check()
            return info.value
        finally:
            await o.aclose()

    return trio.run(main)


def test_a_host_alias_with_proxyjump_reaches_a_nas_only_the_jump_host_sees(
    jump_and_nas: tuple[SSHServer, SSHServer],
    world_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jump, nas = jump_and_nas
    lib = _library(world_dir)
    home = _home(world_dir, jump, nas, monkeypatch)
    # The NAS's jump-side address cannot be reached from here, only through the jump.
    # The NAS drops what comes straight from this host.
    with pytest.raises(OSError):
        socket.create_connection((nas.ns.ip, NAS_PORT), timeout=1.0).close()

    o = _origin(f"sftp://nas{lib}")
    assert _read_all(o) == (["album/01.flac"], b"through the jump host" * 1000, 1)
    assert o._where() == f"nobody@nas ({NAS_SIDE}:{NAS_PORT}) via jumpbox"

    # An alias without a jump (the jump host serves SFTP too), from an explicit
    # config_file elsewhere; without it that alias means nothing.
    moved = world_dir / "elsewhere.conf"
    (home / ".ssh" / "config").rename(moved)
    direct = _origin(f"sftp://jumpbox{lib}", config_file=moved)
    assert direct.display_url == f"sftp://jumpbox{lib}"
    assert _read_all(direct)[::2] == (["album/01.flac"], 0)
    assert "resolve" in _error(_origin(f"sftp://jumpbox{lib}")).strerror
    moved.rename(home / ".ssh" / "config")

    # Host keys are still verified: the NAS's behind the jump, and the jump host's own.
    known = home / ".ssh" / "known_hosts"
    lines = known.read_text().splitlines()
    known.write_text(lines[0] + "\n")
    err = _error(_origin(f"sftp://nas{lib}"))
    assert "is not in" in err.strerror and "REFUSED" in err.strerror, err.strerror
    assert f"{NAS_SIDE}:{NAS_PORT}" in err.strerror
    known.write_text("\n".join(lines[1:]) + "\n")
    err = _error(_origin(f"sftp://nas{lib}"))
    assert "jump host jumpbox" in err.strerror and "REFUSED" in err.strerror, err.strerror
    known.write_text("\n".join(lines) + "\n")

    # Without the jump host there is no way to the NAS.
    jump.kill()
    err = _error(_origin(f"sftp://nas{lib}"))
    assert "jump host jumpbox" in err.strerror and "refused" in err.strerror, err.strerror
    jump.start()

    # IdentityFile + IdentitiesOnly: only the config's key is offered, even when an agent
    # holds the one the NAS would take; without IdentitiesOnly the agent's is tried too.
    config = home / ".ssh" / "config"
    nas_block = config.read_text().replace(str(nas.client_key), str(jump.client_key))
    config.write_text(nas_block)
    agent_sock = world_dir / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if agent_sock.exists():
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(agent_sock)}
        subprocess.run(["ssh-add", str(nas.client_key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(agent_sock))
        err = _error(_origin(f"sftp://nas{lib}"))
        assert "authentication" in err.strerror, err.strerror
        config.write_text(nas_block.replace("IdentitiesOnly yes", "IdentitiesOnly no"))
        assert _read_all(_origin(f"sftp://nas{lib}"))[0] == ["album/01.flac"]
    finally:
        agent.kill()
        agent.wait(5)
