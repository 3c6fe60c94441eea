"""Layer 1 (gaps 2.10, 3.1): sd_notify messages and the watchdog's ping logic, against a
real datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
import trio

from musicfs.service.notify import Notifier, watchdog_interval
from musicfs.service.watchdog import Watchdog


class Capture:
    """A bound datagram socket: what systemd would receive."""

    def __init__(self, path: Path | None = None, abstract: str | None = None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract is not None:
            self.sock.bind(b"\0" + abstract.encode())
            self.address = "@" + abstract
        else:
            assert path is not None
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def capture(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = Capture(tmp_path / "notify.sock")
    yield c
    c.close()


def test_messages_reach_the_socket(capture: Capture) -> None:
    n = Notifier(capture.address)
    assert n.ready("serving 3 tracks")
    assert n.send_status("offline")
    assert n.watchdog()
    assert n.stopping()
    got = capture.messages()
    assert got[0].splitlines() == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=serving 3 tracks"]
    assert got[1:] == ["STATUS=offline", "WATCHDOG=1", "STOPPING=1"]


def test_abstract_namespace_socket() -> None:
    c = Capture(abstract=f"musicfs-test-{os.getpid()}")
    try:
        Notifier(c.address).watchdog()
        assert c.messages() == ["WATCHDOG=1"]
    finally:
        c.close()


def test_without_notify_socket_everything_is_a_no_op(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier.from_env()
    assert not n.enabled
    assert not n.ready() and not n.watchdog()


def test_a_vanished_receiver_does_not_raise(tmp_path: Path, caplog) -> None:
    n = Notifier(str(tmp_path / "gone.sock"))
    assert not n.watchdog()
    assert not n.watchdog()
    assert caplog.text.count("cannot send") == 1  # warned once, not per ping


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("", "0", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert watchdog_interval() is None


def run_watchdog(wd: Watchdog, seconds: float, during=None) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wd.run)
            if during is not None:
                await during()
            else:
                await trio.sleep(seconds)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_pings_while_the_probe_answers(capture: Capture) -> None:
    probes = []
    wd = Watchdog(Notifier(capture.address), 0.05, lambda: probes.append(1))
    run_watchdog(wd, 0.6)
    pings = capture.messages()
    assert pings and set(pings) == {"WATCHDOG=1"}
    assert 4 <= len(pings) <= 12
    assert len(probes) >= len(pings)


def test_a_failing_probe_stops_the_pings(capture: Capture, caplog) -> None:
    def probe() -> None:
        raise OSError(107, "Transport endpoint is not connected")

    wd = Watchdog(Notifier(capture.address), 0.05, probe)
    run_watchdog(wd, 0.4)
    assert capture.messages() == []
    assert wd.missed >= 4
    assert caplog.text.count("not pinging systemd") == 1  # logged on change, not per tick


def test_a_stuck_probe_stops_the_pings_without_piling_up_threads(capture: Capture) -> None:
    """The wedged-worker-pool case: the probe blocks in the kernel and never returns."""
    release = threading.Event()
    entered = []

    def probe() -> None:
        entered.append(1)
        if len(entered) > 2:
            release.wait(10)

    wd = Watchdog(Notifier(capture.address), 0.05, probe, probe_timeout=0.05)

    async def during() -> None:
        while len(entered) < 3:
            await trio.sleep(0.01)
        assert len(capture.messages()) <= 2
        await trio.sleep(0.5)
        assert len(entered) == 3  # the stuck probe is not started again while it hangs
        assert capture.messages() == []  # ... and nothing was pinged meanwhile
        assert wd.last_problem == "an earlier self-probe is still stuck in the kernel"
        release.set()
        await trio.sleep(0.4)
        assert len(capture.messages()) >= 3  # unwedged: pinging again

    run_watchdog(wd, 0, during)


async def _until(condition, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for ``condition`` (a loaded machine may delay any one tick), within a bound."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def test_a_blocked_event_loop_skips_the_ping(capture: Capture) -> None:
    wd = Watchdog(Notifier(capture.address), 0.1, lambda: None)

    async def during() -> None:
        await _until(lambda: wd.pings >= 2, "two pings")
        pinged = wd.pings
        await _until(lambda: wd.pings > pinged, "a ping")  # the watchdog now sleeps 0.1 s
        capture.messages()
        missed = wd.missed
        time.sleep(0.5)  # a synchronous call hogging the loop
        await _until(lambda: wd.missed > missed, "a missed ping")
        assert capture.messages() == []  # the late wake-up did not ping
        assert wd.last_problem is not None and "unresponsive" in wd.last_problem
        pings = wd.pings
        await _until(lambda: wd.pings >= pings + 2, "pings again")
        assert len(capture.messages()) >= 2

    run_watchdog(wd, 0, during)
