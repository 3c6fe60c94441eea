"""Layer 1: health checks, hysteresis, backoff of failing origins, offline mode."""

from __future__ import annotations

import errno
import random
import time

import pytest
import trio
import trio.testing

from musicfs import failpoints
from musicfs.backoff import RestartBackoff, backoff_delay
from musicfs.origins.health import HealthMonitor, HealthPolicy, Mode, State
from tests.support.faulty_origin import (
    HEALTHY,
    FaultyOrigin,
    MemoryOrigin,
    error,
    hang,
    slow,
)


def faulty(name: str) -> FaultyOrigin:
    return FaultyOrigin(MemoryOrigin(name, {"a.flac": b"x" * 100}))


def virtual(fn):  # type: ignore[no-untyped-def]
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_hanging_origin_does_not_delay_other_verdicts() -> None:
    """Checks run in parallel, each bounded by its own timeout (gaps 4.2.1, 4.2.2)."""
    good1, good2, dead = faulty("good1"), faulty("good2"), faulty("dead")
    dead.set_mode(hang())
    monitor = HealthMonitor([dead, good1, good2], HealthPolicy(check_timeout=1.0))

    async def main() -> tuple[float, float, dict[str, bool]]:
        start = trio.current_time()
        verdict_at = 0.0
        async with trio.open_nursery() as nursery:
            results: dict[str, bool] = {}

            async def run_all() -> None:
                results.update(await monitor.check_all())

            nursery.start_soon(run_all)
            # The healthy origins' verdicts are in long before the dead one times out.
            while monitor.health("good2").last_check is None:
                await trio.sleep(0.01)
            verdict_at = trio.current_time() - start
        return verdict_at, trio.current_time() - start, results

    started = time.monotonic()
    verdict_at, total, results = trio.run(main)
    assert verdict_at < 0.3
    assert 0.9 <= total < 1.8  # one timeout, not three checks in a row
    assert time.monotonic() - started < 3
    assert results == {"dead": False, "good1": True, "good2": True}
    assert monitor.state("good1") is State.HEALTHY
    assert monitor.state("dead") is State.DEGRADED
    assert "no answer within 1s" in (monitor.health("dead").last_error or "")


def test_hysteresis_healthy_degraded_unhealthy_and_back() -> None:
    o = faulty("o")
    monitor = HealthMonitor([o], HealthPolicy(fail_threshold=3, recover_threshold=2))

    async def main() -> list[State]:
        seen = []
        o.set_mode(error(errno.ECONNREFUSED))
        for _ in range(3):
            await monitor.check_one("o")
            seen.append(monitor.state("o"))
        o.set_mode(HEALTHY)
        for _ in range(2):
            await monitor.check_one("o")
            seen.append(monitor.state("o"))
        # One blip on a healthy origin degrades it; it needs two good checks to be trusted.
        o.set_mode(error(errno.EIO))
        await monitor.check_one("o")
        seen.append(monitor.state("o"))
        o.set_mode(HEALTHY)
        await monitor.check_one("o")
        seen.append(monitor.state("o"))
        await monitor.check_one("o")
        seen.append(monitor.state("o"))
        return seen

    H, D, U = State.HEALTHY, State.DEGRADED, State.UNHEALTHY
    assert trio.run(main) == [D, D, U, D, H, D, D, H]


def test_file_errors_from_reads_do_not_count_against_the_origin() -> None:
    from musicfs.origins.base import OriginError
    from musicfs.origins.health import is_origin_failure

    assert not is_origin_failure(OriginError(errno.ENOENT, "gone", origin="o"))
    assert not is_origin_failure(OriginError(errno.EACCES, "denied", origin="o"))
    assert is_origin_failure(OriginError(errno.ETIMEDOUT, "slow", origin="o"))
    assert is_origin_failure(OriginError(errno.ECONNREFUSED, "refused", origin="o"))


def test_failing_origin_is_backed_off_not_hammered() -> None:
    good, bad = faulty("good"), faulty("bad")
    bad.set_mode(error(errno.ECONNREFUSED))
    policy = HealthPolicy(interval=1.0, max_backoff=16.0, check_timeout=0.5)
    monitor = HealthMonitor([good, bad], policy)

    async def main() -> None:
        with trio.move_on_after(120):
            await monitor.run()

    virtual(main)
    # 120 s at a 1 s interval: ~120 checks of the good origin; the bad one backs off
    # (1, 2, 4, 8, then 8..16 s) to a small fraction of that.
    assert 100 <= good.calls["check"] <= 125
    assert 8 <= bad.calls["check"] <= 20
    assert monitor.state("bad") is State.UNHEALTHY


def test_backoff_delay_grows_exponentially_with_jitter_and_a_cap() -> None:
    rng = random.Random(1)
    for failures, full in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (10, 2.0)]:
        samples = [backoff_delay(failures, 0.1, 2.0, rng) for _ in range(200)]
        assert all(full * 0.5 <= s <= full for s in samples)
        assert max(samples) - min(samples) > full * 0.3  # jitter really spreads them
    assert backoff_delay(0, 0.1, 2.0) == 0


def test_offline_mode_and_recovery_without_restart() -> None:
    a, b = faulty("a"), faulty("b")
    policy = HealthPolicy(interval=1.0, max_backoff=4.0, check_timeout=0.5, fail_threshold=2)
    monitor = HealthMonitor([a, b], policy)
    modes: list[tuple[float, str]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor.run)
            await trio.sleep(0.1)
            modes.append((trio.current_time(), monitor.mode.value))
            a.set_mode(hang())
            b.set_mode(error(errno.EHOSTUNREACH))
            await trio.sleep(10)
            modes.append((trio.current_time(), monitor.mode.value))
            status = monitor.status()
            assert status["mode"] == "offline"
            assert {o["state"] for o in status["origins"].values()} == {"unhealthy"}
            a.set_mode(HEALTHY)
            b.set_mode(HEALTHY)
            # Recovery by itself, within one backoff period plus the recovery checks.
            for _ in range(200):
                await trio.sleep(0.1)
                if monitor.mode is Mode.ONLINE:
                    break
            modes.append((trio.current_time(), monitor.mode.value))
            nursery.cancel_scope.cancel()

    virtual(main)
    assert [m for _, m in modes] == ["online", "offline", "online"]
    assert modes[2][0] - modes[1][0] < 4.0 + 2 * 1.0 + 1.0


def test_nudge_brings_a_backed_off_check_forward_but_not_below_interval() -> None:
    o = faulty("o")
    o.set_mode(error(errno.ECONNREFUSED))
    policy = HealthPolicy(interval=1.0, max_backoff=60.0, check_timeout=0.5)
    monitor = HealthMonitor([o], policy)

    async def main() -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor.run)
            await trio.sleep(40)  # backoff has grown to tens of seconds
            before = o.calls["check"]
            for _ in range(50):  # a player hammering reads while offline
                monitor.nudge()
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
            return o.calls["check"] - before

    extra = virtual(main)
    assert 3 <= extra <= 6  # ~one check per interval during 5 s of nudges, not 50


def test_reads_waiting_on_a_failing_origin_get_it_checked_every_few_seconds() -> None:
    """With the shipped 10 s interval, a player's waiting reads still get a check every
    nudge_interval (2 s): the library is back seconds after a network blip."""
    o = faulty("o")
    o.set_mode(error(errno.ECONNREFUSED))
    monitor = HealthMonitor([o], HealthPolicy(check_timeout=0.5))
    assert monitor.policy.interval == 10.0 and monitor.policy.nudge_interval == 2.0

    async def main() -> tuple[int, float]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor.run)
            await trio.sleep(120)  # backoff has grown to a minute
            before = o.calls["check"]
            for _ in range(100):  # 10 s of a player's reads finding nothing
                monitor.nudge()
                await trio.sleep(0.1)
            checks = o.calls["check"] - before
            o.set_mode(HEALTHY)  # the network is back
            back = trio.current_time()
            while not monitor.usable("o"):
                monitor.nudge()
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
            return checks, trio.current_time() - back

    checks, recovered = virtual(main)
    assert 4 <= checks <= 6  # one every 2 s, not one per read and not one per minute
    assert recovered <= 2.2


def test_health_check_failpoint_hang_is_bounded() -> None:
    o = faulty("o")
    monitor = HealthMonitor([o], HealthPolicy(check_timeout=0.3))
    failpoints.set("health.check", "sleep(5000)")

    async def main() -> bool:
        return await monitor.check_one("o")

    started = time.monotonic()
    assert trio.run(main) is False
    assert time.monotonic() - started < 2


def test_slow_check_within_timeout_is_healthy_and_reports_latency() -> None:
    o = faulty("o")
    o.set_mode(slow(0.2))
    monitor = HealthMonitor([o], HealthPolicy(check_timeout=1.0))
    assert virtual(lambda: monitor.check_one("o")) is True
    status = monitor.status()["origins"]["o"]
    assert status["state"] == "healthy" and 190 <= status["latency_ms"] <= 250


def test_restart_backoff_doubles_to_its_cap_and_starts_over_after_a_calm_run() -> None:
    backoff = RestartBackoff(0.1, 1.0, calm=60.0)
    pauses = [backoff.pause_after(ran_for=1.0) for _ in range(6)]
    assert pauses == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.pause_after(ran_for=61.0) == pytest.approx(0.1)
    assert backoff.pause_after(ran_for=1.0) == pytest.approx(0.2)
