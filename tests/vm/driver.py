"""The subset of the NixOS test driver's machine API that tests/vm/scenarios use, for Debian
machines booted here: systemd as PID 1 in a container (its own PID, mount, UTS, IPC, cgroup
and network namespaces) over an overlay of a debootstrapped bookworm root.

Semantics follow nixpkgs' nixos/lib/test-driver (machine/__init__.py): a command runs as
root under ``timeout N bash -c 'set -euo pipefail; ...'`` with only its stdout captured
(stderr goes to the machine's log); ``succeed``/``fail`` default to no timeout, ``execute``
to 900 s; ``wait_until_succeeds`` retries once a second for ``timeout`` tries;
``wait_for_unit`` raises when the unit fails, or is inactive with no job pending. Where
QEMU is replaced: ``block()`` takes the machine's link to the other machines down at the
host's bridge (its packets are dropped silently, as with QEMU's ``set_link off``);
``crash()`` pulls the cable, SIGKILLs the container and destroys its network namespace
(no FIN or RST leaves it: a power cut); ``start()`` after a crash boots it again from the
same disk (the overlay's upper layer persists, as a VM's disk image would).
"""

from __future__ import annotations

import contextlib
import os
import pty
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}


class RequestedAssertionFailed(AssertionError):
    """What the NixOS driver raises when a machine action's condition does not hold."""


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)


def retry(fn: Callable[[bool], bool], timeout: int = 900) -> None:
    """The driver's retry: ``timeout`` tries one second apart, then one last one."""
    for _ in range(timeout):
        if fn(False):
            return
        time.sleep(1)
    if not fn(True):
        raise RequestedAssertionFailed(
            f"action timed out after {timeout} tries with one-second pause in-between"
        )


@dataclass
class Network:
    """A host bridge joining the machines, like the test driver's VLAN 1."""

    tag: str
    prefix: str  # "192.168.231" -> machines get .2, .3, ...
    bridge: str = ""

    def __post_init__(self) -> None:
        self.bridge = f"mfsbr{self.tag}"
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "link", "set", self.bridge, "up")

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


@dataclass
class Machine:
    """One Debian machine. ``lowers`` are overlay lower layers, topmost first."""

    name: str
    index: int
    lowers: list[Path]
    state: Path
    network: Network
    hosts: str = ""
    disks: dict[str, str] = field(default_factory=dict)  # guest device -> host block device
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    booted: bool = False
    _console_slave: int | None = None

    # -- names ------------------------------------------------------------------------------
    @property
    def netns(self) -> str:
        return f"mfsvm{self.network.tag}{self.name}"

    @property
    def host_veth(self) -> str:
        return f"mfs{self.network.tag}h{self.index}"

    @property
    def ip(self) -> str:
        return f"{self.network.prefix}.{self.index + 1}"

    @property
    def log_path(self) -> Path:
        return self.state / "machine.log"

    def log(self, message: str) -> None:
        with self.log_path.open("a") as out:
            out.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")

    # -- lifecycle --------------------------------------------------------------------------
    def _plug_in(self) -> None:
        guest_veth = f"mfs{self.network.tag}g{self.index}"
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", self.host_veth, "type", "veth", "peer", "name", guest_veth)
        _run("ip", "link", "set", guest_veth, "netns", self.netns)
        _run("ip", "link", "set", self.host_veth, "master", self.network.bridge, "up")
        mac = f"52:54:00:12:01:{self.index:02x}"  # fixed, like a VM's NIC across reboots
        ns = ("ip", "-n", self.netns)
        _run(*ns, "link", "set", guest_veth, "name", "eth1")
        _run(*ns, "link", "set", "eth1", "address", mac, "up")
        _run(*ns, "addr", "add", f"{self.ip}/24", "dev", "eth1")
        _run(*ns, "link", "set", "lo", "up")

    def _unplug(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_veth], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, check=False)

    def start(self) -> None:
        """Boot the machine (asynchronous, as in the driver: commands wait for the boot)."""
        if self.booted:
            return
        for sub in ("upper", "work", "merged"):
            (self.state / sub).mkdir(parents=True, exist_ok=True)
        etc = self.state / "upper" / "etc"
        etc.mkdir(exist_ok=True)
        (etc / "hostname").write_text(f"{self.name}\n")
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost\n{self.hosts}")
        self._plug_in()
        cgroup = Path("/sys/fs/cgroup/unified") / self.netns
        cgroup.mkdir(exist_ok=True)
        master, slave = pty.openpty()  # the container's /dev/console, read into the log
        console = os.ttyname(slave)
        boot = _BOOT.format(
            lowers=":".join(str(p) for p in self.lowers),
            state=shlex.quote(str(self.state)),
            console=console,
            name=self.name,
            disks=" ".join(f"{g}={h}" for g, h in self.disks.items()),
        )
        self.log(f"booting (netns {self.netns}, {self.ip})")
        self.process = subprocess.Popen(
            [
                "sh",
                "-c",
                f"echo $$ > {cgroup}/cgroup.procs && exec ip netns exec {self.netns} "
                'unshare --pid --fork --mount --uts --ipc --cgroup sh -c "$0"',
                boot,
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log_path.open("a"),
            stderr=subprocess.STDOUT,
            env={"PATH": os.environ.get("PATH", GUEST_ENV["PATH"]), "container": "musicfs-vm"},
        )
        # Held open while the machine runs: a pty master reads EIO once no slave is open.
        self._console_slave = slave
        threading.Thread(target=self._read_console, args=(master,), daemon=True).start()
        deadline = time.monotonic() + 30
        while self.pid is None and time.monotonic() < deadline:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            found = children.read_text().split() if children.exists() else []
            if found:
                self.pid = int(found[0])
            elif self.process.poll() is not None:
                break
            else:
                time.sleep(0.05)
        if self.pid is None:
            raise RuntimeError(f"{self.name}: the container did not start (see {self.log_path})")
        self.booted = True
        self._wait_for_boot()

    def _read_console(self, master: int) -> None:
        with self.log_path.open("ab") as out:
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                out.write(data)
                out.flush()
        os.close(master)

    def _wait_for_boot(self, timeout: int = 120) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            _status, state = self._exec("systemctl is-system-running || true", 10)
            if state.strip() in ("running", "degraded"):
                self.log(f"booted: {state.strip()}")
                return
            time.sleep(0.3)
        raise RuntimeError(f"{self.name}: systemd did not finish booting ({state.strip()!r})")

    def _stop(self, sig: int) -> None:
        if self.process is None:
            return
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            if self.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            self.process.wait(30)
        self.process = None
        self.pid = None
        self.booted = False
        if self._console_slave is not None:
            os.close(self._console_slave)
            self._console_slave = None
        with contextlib.suppress(OSError):
            (Path("/sys/fs/cgroup/unified") / self.netns).rmdir()

    def crash(self) -> None:
        """A power cut: nothing more leaves the machine, every process dies at once."""
        if not self.booted:
            return
        self.log("forced crash")
        self.block()
        self._stop(signal.SIGKILL)
        self._unplug()

    def shutdown(self) -> None:
        if not self.booted:
            return
        self._exec("systemctl --no-block poweroff", 30)
        assert self.process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(90)
        self._stop(signal.SIGKILL)  # a no-op once it powered off
        self._unplug()

    def release(self) -> None:
        """End of the test: whatever state the machine is in, it goes."""
        self._stop(signal.SIGKILL)
        self._unplug()

    def block(self) -> None:
        """Unplug the cable: the link to the other machines goes down at the bridge."""
        self.log("link down")
        _run("ip", "link", "set", self.host_veth, "down")

    def unblock(self) -> None:
        self.log("link up")
        _run("ip", "link", "set", self.host_veth, "up")

    # -- commands ---------------------------------------------------------------------------
    def _exec(self, command: str, timeout: int | None) -> tuple[int, str]:
        if self.pid is None:
            raise RequestedAssertionFailed(f"{self.name} is not running")
        limit = ["timeout", str(timeout)] if timeout is not None else []
        argv = [
            "nsenter", "--target", str(self.pid), "--mount", "--uts", "--ipc", "--net",
            "--pid", "--cgroup", "--root", "--wd",
            "env", "-i", *(f"{k}={v}" for k, v in GUEST_ENV.items()),
            *limit, "bash", "-c", f"set -euo pipefail; {command}",
        ]  # fmt: skip
        with self.log_path.open("a") as log:
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                timeout=None if timeout is None else timeout + 60,
                check=False,
            )
        return proc.returncode, proc.stdout.decode(errors="replace")

    def execute(
        self,
        command: str,
        check_return: bool = True,
        check_output: bool = True,
        timeout: int | None = 900,
    ) -> tuple[int, str]:
        self.log(f"execute: {command}")
        status, out = self._exec(command, timeout)
        self.log(f"  -> {status}")
        return (status if check_return else -1), (out if check_output else "")

    def succeed(self, *commands: str, timeout: int | None = None) -> str:
        output = ""
        for command in commands:
            status, out = self.execute(command, timeout=timeout)
            if status != 0:
                self.log(f"output: {out}")
                raise RequestedAssertionFailed(
                    f"{self.name}: command `{command}` failed (exit code {status})"
                )
            output += out
        return output

    def fail(self, *commands: str, timeout: int | None = None) -> str:
        output = ""
        for command in commands:
            status, out = self.execute(command, timeout=timeout)
            if status == 0:
                raise RequestedAssertionFailed(
                    f"{self.name}: command `{command}` unexpectedly succeeded"
                )
            output += out
        return output

    def wait_until_succeeds(self, command: str, timeout: int = 900) -> str:
        output = ""

        def check(_last: bool) -> bool:
            nonlocal output
            status, output = self.execute(command, timeout=timeout)
            return status == 0

        retry(check, timeout)
        return output

    def wait_until_fails(self, command: str, timeout: int = 900) -> str:
        output = ""

        def check(_last: bool) -> bool:
            nonlocal output
            status, output = self.execute(command, timeout=timeout)
            return status != 0

        retry(check, timeout)
        return output

    def systemctl(self, q: str, user: str | None = None) -> tuple[int, str]:
        if user is not None:
            raise NotImplementedError("systemctl --user is not part of this driver's subset")
        return self.execute(f"systemctl {q}")

    def get_unit_property(self, unit: str, prop: str) -> str:
        status, out = self.systemctl(f'--no-pager show "{unit}" --property="{prop}"')
        if status != 0 or not out.startswith(f"{prop}="):
            raise RequestedAssertionFailed(f"systemctl show {unit} --property={prop}: {out!r}")
        return out.strip().split("=", 1)[1]

    def wait_for_unit(self, unit: str, user: str | None = None, timeout: int = 900) -> None:
        def check_active(_last: bool) -> bool:
            state = self.get_unit_property(unit, "ActiveState")
            if state == "failed":
                raise RequestedAssertionFailed(f'unit "{unit}" reached state "{state}"')
            if state == "inactive":
                _status, jobs = self.systemctl("list-jobs --full 2>&1")
                if "No jobs" in jobs and self.get_unit_property(unit, "ActiveState") == state:
                    raise RequestedAssertionFailed(
                        f'unit "{unit}" is inactive and there are no pending jobs'
                    )
            return state == "active"

        retry(check_active, timeout)

    def wait_for_open_port(self, port: int, addr: str = "localhost", timeout: int = 900) -> None:
        retry(lambda _last: self.execute(f"nc -z {addr} {port}")[0] == 0, timeout)

    def sleep(self, secs: int) -> None:
        self.succeed(f"sleep {secs}")


@contextlib.contextmanager
def subtest(name: str) -> Iterator[None]:
    """The driver's subtest: a named block; a failure inside names it."""
    try:
        yield
    except Exception as exc:
        raise RequestedAssertionFailed(f"subtest {name!r}: {exc}") from exc


# The container's PID 1 before it becomes systemd: the machine's root (an overlay of the
# cached rootfs and this machine's own upper layer), /proc, a read-only /sys (containers
# get no udev), its own cgroup2 tree (the cgroup namespace makes it the root), a small
# /dev with /dev/fuse and the machine's disks, and the pty as /dev/console.
_BOOT = """
set -eu
state={state}
root=$state/merged
mount --make-rprivate /
mount -t overlay overlay -o lowerdir={lowers},upperdir=$state/upper,workdir=$state/work "$root"
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount -t cgroup2 cgroup2 "$root/sys/fs/cgroup"
mount -t tmpfs -o mode=755,nosuid tmpfs "$root/dev"
for node in null zero full random urandom tty fuse loop-control; do
  touch "$root/dev/$node"; mount --bind "/dev/$node" "$root/dev/$node"
done
for disk in {disks}; do
  touch "$root/dev/${{disk%%=*}}"; mount --bind "${{disk#*=}}" "$root/dev/${{disk%%=*}}"
done
touch "$root/dev/console"; mount --bind {console} "$root/dev/console"
mkdir -p "$root/dev/pts" "$root/dev/shm" "$root/dev/mqueue"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
hostname {name}
exec chroot "$root" /lib/systemd/systemd --log-level=info </dev/console >/dev/console 2>&1
"""
