"""Real servers in throwaway network namespaces for layer-3 tests.

``NetNS`` creates a namespace joined to this host by a veth pair with a private /30, and
can break the link the ways networks break: an nftables rule that silently drops packets
(a blackhole: no RST, no ICMP), the link going down, the server process dying. Names
carry the test process id and a counter, and everything is removed on exit -- deleting the
namespace takes its veth pair and nftables table with it.

``SSHServer`` runs OpenSSH's ``sshd`` (from PATH, else Debian's) inside one; ``S3Server``
runs moto's S3 API server. Neither touches the host's own sshd or firewall.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.tls import ServerCert

_counter = itertools.count()


def require_root_network() -> None:
    """Layer 3 needs root, iproute2 and nftables. Missing them fails, never skips."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not installed (scripts/setup-debian.sh test)")
    if problems:
        pytest.fail("layer 3 (network) cannot run here: " + ", ".join(problems))


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


def _used_prefixes() -> str:
    return _run("ip", "-4", "addr", "show").stdout


def wait_for_port(host: str, port: int, timeout: float = 30.0, proc: object = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and getattr(proc, "poll", lambda: None)() is not None:
            raise AssertionError(f"server exited before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {host}:{port} after {timeout}s")


class NetNS:
    def __init__(self) -> None:
        require_root_network()
        n = next(_counter)
        pid = os.getpid()
        self.name = f"mfs-{pid}-{n}"
        self.host_if = f"mh{pid}x{n}"[:15]
        self.ns_if = f"mn{pid}x{n}"[:15]
        used = _used_prefixes()
        for attempt in range(4096):
            block = (pid * 64 + n * 7 + attempt * 13) % (50 * 256 * 64)
            a, b, c = 200 + block // (256 * 64), (block // 64) % 256, (block % 64) * 4
            prefix = f"10.{a}.{b}."
            if f"inet {prefix}{c + 1}/" not in used and f"inet {prefix}{c + 2}/" not in used:
                break
        self.host_ip = f"{prefix}{c + 1}"
        self.ip = f"{prefix}{c + 2}"
        self._procs: list[subprocess.Popen[bytes]] = []
        self._created = False

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> NetNS:
        try:
            _run("ip", "netns", "add", self.name)
            self._created = True
            _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _run("ip", "link", "set", self.ns_if, "netns", self.name)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            self.exec("ip", "addr", "add", f"{self.ip}/30", "dev", self.ns_if)
            self.exec("ip", "link", "set", self.ns_if, "up")
            self.exec("ip", "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self._created:
            self.kill_all()
            _run("ip", "netns", "delete", self.name, check=False)
            self._created = False
        _run("ip", "link", "delete", self.host_if, check=False)

    # -- processes -----------------------------------------------------------------------

    def exec(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("ip", "netns", "exec", self.name, *cmd, check=check)

    def popen(self, *cmd: str, log: Path) -> subprocess.Popen[bytes]:
        out = log.open("ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *cmd], stdout=out, stderr=subprocess.STDOUT
        )
        out.close()
        self._procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        out = _run("ip", "netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split()]

    def kill_all(self) -> None:
        """SIGKILL every process in the namespace (servers and their session children)."""
        for _ in range(20):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    # -- faults --------------------------------------------------------------------------

    def blackhole(self) -> None:
        """Drop every packet arriving in the namespace: peers see silence, not errors."""
        self.exec("nft", "add", "table", "inet", "mfs_fault")
        self.exec(
            "nft",
            "add chain inet mfs_fault input { type filter hook input priority -10 ; "
            "policy accept ; }",
        )
        self.exec("nft", "add", "rule", "inet", "mfs_fault", "input", "iifname", self.ns_if, "drop")

    def unblackhole(self) -> None:
        self.exec("nft", "delete", "table", "inet", "mfs_fault")

    def link_down(self) -> None:
        _run("ip", "link", "set", self.host_if, "down")

    def link_up(self) -> None:
        _run("ip", "link", "set", self.host_if, "up")
        # The kernel drops the address's route while the link is down; it comes back with it.


def sshd_binary() -> str:
    """sshd from PATH (NixOS, `nix develop`), else Debian's; absolute, as sshd insists."""
    found = shutil.which("sshd")
    return os.path.abspath(found) if found else "/usr/sbin/sshd"


class SSHServer:
    """OpenSSH sshd inside ``ns``, serving ``root_dir`` over SFTP to a generated key."""

    def __init__(self, ns: NetNS, workdir: Path, *, user: str = "root", port: int = 22):
        self.ns = ns
        self.port = port
        self.user = user
        self.dir = workdir / f"sshd-{ns.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"
        for key in (self.host_key, self.client_key):
            if not key.exists():
                _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        os.chmod(self.authorized_keys, 0o644)
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(f"{ns.ip} {self.public_host_key()}\n")
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            f"Port {port}\n"
            f"ListenAddress 0.0.0.0\n"
            f"HostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            f"PidFile {self.dir}/sshd.pid\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            "Subsystem sftp internal-sftp\n"
            "LogLevel ERROR\n"
        )
        self.log = self.dir / "sshd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def public_host_key(self) -> str:
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    def url(self, root: Path | str) -> str:
        port = f":{self.port}" if self.port != 22 else ""
        return f"sftp://{self.user}@{self.ns.ip}{port}{root}"

    def origin(self, root: Path | str, name: str = "nas") -> dict[str, object]:
        """An ``[[origin]]`` table for MusicFS reaching ``root`` on this server."""
        return {
            "url": self.url(root),
            "name": name,
            "key_file": self.client_key,
            "known_hosts": self.known_hosts,
        }

    def start(self) -> SSHServer:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        self.proc = self.ns.popen(sshd_binary(), "-D", "-e", "-f", str(self.config), log=self.log)
        wait_for_port(self.ns.ip, self.port, proc=self.proc)
        return self

    def kill(self) -> None:
        """The server dies: listener and every session process, at once."""
        self.ns.kill_all()
        if self.proc is not None:
            self.proc.wait(10)


class S3Server:
    """moto's S3 API server inside ``ns``. With ``auth`` only the generated IAM user's key
    works, and that user may not read objects under ``secret/``; without it any key works
    (and a restarted server accepts the same one)."""

    def __init__(
        self,
        ns: NetNS,
        workdir: Path,
        port: int = 9000,
        *,
        auth: bool = True,
        tls: ServerCert | None = None,
    ):
        self.ns = ns
        self.port = port
        self.auth = auth
        self.tls = tls  # serve HTTPS with this certificate
        self.log = workdir / f"moto-{ns.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.access_key = "" if auth else "open-access-key"
        self.secret_key = "" if auth else "open-secret-key"

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.ns.ip}:{self.port}"

    def start(self) -> S3Server:
        tls_args = ["-c", str(self.tls.cert), "-k", str(self.tls.key)] if self.tls else []
        self.proc = self.ns.popen(
            "env",
            # The first three requests (the IAM setup below) run without authentication.
            f"INITIAL_NO_AUTH_ACTION_COUNT={3 if self.auth else 'inf'}",
            sys.executable,
            "-m",
            "moto.server",
            "-H",
            "0.0.0.0",
            "-p",
            str(self.port),
            *tls_args,
            log=self.log,
        )
        wait_for_port(self.ns.ip, self.port, timeout=60, proc=self.proc)
        if self.auth:
            self._create_user()
        return self

    def _create_user(self) -> None:
        import json

        import boto3

        iam = boto3.client(
            "iam",
            endpoint_url=self.endpoint,
            verify=str(self.tls.ca) if self.tls else None,
            region_name="us-east-1",
            aws_access_key_id="setup",
            aws_secret_access_key="setup",
        )
        iam.create_user(UserName="musicfs")
        key = iam.create_access_key(UserName="musicfs")["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"Effect": "Deny", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::*/secret/*"},
            ],
        }
        iam.put_user_policy(UserName="musicfs", PolicyName="p", PolicyDocument=json.dumps(policy))

    def kill(self) -> None:
        self.ns.kill_all()
        if self.proc is not None:
            self.proc.wait(10)

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def client(self):  # type: ignore[no-untyped-def]
        import urllib3
        from minio import Minio

        return Minio(
            f"{self.ns.ip}:{self.port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.tls is not None,
            region="us-east-1",
            http_client=urllib3.PoolManager(ca_certs=str(self.tls.ca)) if self.tls else None,
        )

    def upload_tree(self, bucket: str, root: Path, prefix: str = "") -> int:
        from concurrent.futures import ThreadPoolExecutor

        client = self.client()
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
        files = [p for p in sorted(root.rglob("*")) if p.is_file()]
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda p: client.fput_object(bucket, prefix + str(p.relative_to(root)), str(p)),
                    files,
                )
            )
        return len(files)


class ByteCounter:
    """Bytes the namespace sends out of its veth (the server's replies), from an nftables
    counter: what a scanner really costs a NAS, whatever the client caches."""

    TABLE = "mfs_bytes"

    def __init__(self, ns: NetNS):
        self.ns = ns
        ns.exec("nft", "add", "table", "inet", self.TABLE)
        ns.exec(
            "nft",
            f"add chain inet {self.TABLE} out {{ type filter hook output priority 0 ; "
            "policy accept ; }",
        )
        ns.exec("nft", "add", "rule", "inet", self.TABLE, "out", "oifname", ns.ns_if, "counter")

    def bytes(self) -> int:
        out = self.ns.exec("nft", "list", "chain", "inet", self.TABLE, "out").stdout
        match = re.search(r"counter packets \d+ bytes (\d+)", out)
        if match is None:
            raise RuntimeError(f"no counter in:\n{out}")
        return int(match.group(1))
