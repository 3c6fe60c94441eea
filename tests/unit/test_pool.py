"""Layer 1: OriginPool.read -- failover, retries with backoff, deadlines, offline mode."""

from __future__ import annotations

import errno
import itertools
import time

import pytest
import trio
import trio.testing

from musicfs.origins.base import OriginError
from musicfs.origins.health import HealthPolicy, Mode, State
from musicfs.origins.pool import OriginPool, RetryPolicy
from tests.support.faulty_origin import (
    HEALTHY,
    FaultyOrigin,
    MemoryOrigin,
    error,
    fail_after,
    fail_every_nth,
    hang,
    partial,
    slow,
    track_on,
)

DATA = bytes(range(256)) * 4096  # 1 MiB, every offset distinguishable
PATH = "artist/album/01.flac"


def origin(name: str, data: bytes = DATA) -> FaultyOrigin:
    return FaultyOrigin(MemoryOrigin(name, {PATH: data}))


def virtual(fn):  # type: ignore[no-untyped-def]
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def pool_of(*origins: FaultyOrigin, **kw) -> OriginPool:  # type: ignore[no-untyped-def]
    kw.setdefault("read_deadline", 2.0)
    kw.setdefault("operation_timeout", 0.5)
    return OriginPool(list(origins), **kw)


TRACK = track_on(PATH, DATA, "a", "b")


def test_read_goes_to_the_preferred_origin() -> None:
    a, b = origin("a"), origin("b")
    pool = pool_of(a, b)
    assert trio.run(pool.read, TRACK, 1000, 5000) == DATA[1000:6000]
    assert (a.calls["read"], b.calls["read"]) == (1, 0)


def test_failover_to_mirror_when_primary_refuses_connections() -> None:
    a, b = origin("a"), origin("b")
    a.set_mode(error(errno.ECONNREFUSED))
    pool = pool_of(a, b)
    assert trio.run(pool.read, TRACK, 0, 4096) == DATA[:4096]
    assert b.calls["read"] == 1 and pool.counters.failovers == 1
    assert pool.health.state("a") is State.DEGRADED
    # The next read prefers the healthy mirror without trying the degraded primary first.
    trio.run(pool.read, TRACK, 4096, 4096)
    assert (a.calls["read"], b.calls["read"]) == (1, 2)


def test_hanging_primary_is_hedged_to_the_mirror() -> None:
    """A primary that stops answering costs about ``hedge_after``, not the operation
    timeout: the mirror is asked too, answers first, and is preferred from then on."""
    a, b = origin("a"), origin("b")
    a.set_mode(hang())
    retry = RetryPolicy(hedge_after=0.2)
    pool = pool_of(a, b, operation_timeout=5.0, read_deadline=8.0, retry=retry)

    async def main() -> tuple[bytes, float]:
        start = trio.current_time()
        data = await pool.read(TRACK, 0, 100)
        return data, trio.current_time() - start

    # Virtual time: on a loaded machine a real-time window of 0.2-0.5 s failed now and then.
    data, took = virtual(main)
    assert data == DATA[:100]
    assert 0.2 <= took < 0.25
    assert pool.health.state("a") is State.DEGRADED  # outrun by the mirror
    assert pool.counters.failovers == 1
    trio.run(pool.read, TRACK, 100, 100)
    assert (a.calls["read"], b.calls["read"]) == (1, 2)  # the mirror goes first now


def test_slow_but_working_primary_is_not_hedged_before_hedge_after() -> None:
    a, b = origin("a"), origin("b")
    a.set_mode(slow(0.1))
    pool = pool_of(a, b, retry=RetryPolicy(hedge_after=0.5))
    assert virtual(lambda: pool.read(TRACK, 0, 100)) == DATA[:100]
    assert (a.calls["read"], b.calls["read"]) == (1, 0)
    assert pool.health.state("a") is State.HEALTHY


def test_hedged_read_takes_whichever_answers_first() -> None:
    a, b = origin("a"), origin("b")
    a.set_mode(slow(0.6))  # slower than hedge_after, but it does answer...
    b.set_mode(slow(0.8))  # ...before the mirror asked at 0.3 s (0.3 + 0.8 = 1.1 s)
    pool = pool_of(
        a, b, operation_timeout=2.0, read_deadline=4.0, retry=RetryPolicy(hedge_after=0.3)
    )

    async def main() -> float:
        start = trio.current_time()
        assert await pool.read(TRACK, 0, 100) == DATA[:100]
        return trio.current_time() - start

    assert virtual(main) == 0.6
    assert (a.calls["read"], b.calls["read"]) == (1, 1)
    assert pool.counters.failovers == 0  # the primary won


def test_switches_origins_mid_file() -> None:
    """A read of several chunks continues on the mirror when the primary dies part-way."""
    a, b = origin("a"), origin("b")
    a.set_mode(fail_after(3, errno.ECONNRESET, ops={"read"}))
    pool = pool_of(a, b)

    async def main() -> bytes:
        out = []
        for off in range(0, len(DATA), 64 * 1024):
            out.append(await pool.read(TRACK, off, 64 * 1024))
        return b"".join(out)

    assert trio.run(main) == DATA
    assert a.calls["read"] >= 4 and b.calls["read"] >= 12


def test_one_request_completed_from_two_origins() -> None:
    a, b = origin("a"), origin("b")
    a.set_mode(partial(1000))
    pool = pool_of(a, b)

    async def main() -> bytes:
        # First call: 1000 bytes from a; then a fails and b serves the rest of the range.
        a.set_mode(partial(1000))
        orig = a.read

        async def read_then_die(path: str, offset: int, length: int) -> bytes:
            data = await orig(path, offset, length)
            a.set_mode(error(errno.ECONNRESET))
            return data

        a.read = read_then_die  # type: ignore[method-assign]
        return await pool.read(TRACK, 500, 10_000)

    assert trio.run(main) == DATA[500:10_500]
    assert b.calls["read"] == 1


def test_partial_reads_are_completed() -> None:
    a = origin("a")
    a.set_mode(partial(1000))
    pool = pool_of(a)
    assert trio.run(pool.read, track_on(PATH, DATA, "a"), 10, 5000) == DATA[10:5010]
    assert a.calls["read"] == 5


def test_transient_failures_are_retried_with_backoff() -> None:
    a = origin("a")
    a.set_mode(fail_every_nth(1, errno.ECONNRESET))  # every call fails...
    pool = pool_of(a, read_deadline=10.0, retry=RetryPolicy(base=0.1, cap=1.6))
    track = track_on(PATH, DATA, "a")
    calls_at: list[float] = []
    orig = a.read

    async def timed(path: str, offset: int, length: int) -> bytes:
        calls_at.append(trio.current_time())
        if len(calls_at) == 3:
            # ...until it is back, the third attempt succeeds (state stays degraded so
            # the pool keeps trying it).
            a.set_mode(HEALTHY)
        return await orig(path, offset, length)

    a.read = timed  # type: ignore[method-assign]

    async def main() -> bytes:
        return await pool.read(track, 0, 100)

    assert virtual(main) == DATA[:100]
    gaps = [b - a for a, b in itertools.pairwise(calls_at)]
    assert len(gaps) == 2
    assert 0.05 <= gaps[0] <= 0.1 and 0.1 <= gaps[1] <= 0.2  # 0.1 * 2**n * [0.5, 1]
    assert pool.counters.retries == 2


def test_no_read_outlives_its_deadline_against_a_hanging_origin() -> None:
    a = origin("a")
    a.set_mode(hang())
    pool = pool_of(a, operation_timeout=5.0, read_deadline=0.8)
    track = track_on(PATH, DATA, "a")

    async def main() -> list[float]:
        took: list[float] = []

        async def one() -> None:
            start = trio.current_time()
            with pytest.raises(OriginError) as info:
                await pool.read(track, 0, 4096)
            assert info.value.errno == errno.EIO
            took.append(trio.current_time() - start)

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(one)
        return took

    started = time.monotonic()
    took = virtual(main)  # virtual time: exact, whatever the machine's load
    assert len(took) == 100 and max(took) <= 0.8 - pool.retry.margin
    assert time.monotonic() - started < 5  # and nothing blocked in real time either


def test_reads_waiting_on_an_origin_declared_unhealthy_are_released() -> None:
    """A rolling storm on a hung origin: reads arrive over 3 s. Once three have timed out
    the origin is declared unhealthy, and every read still waiting on it gets at most
    ``hedge_after`` more instead of its own whole operation timeout -- each one holds a
    kernel FUSE request slot and a worker meanwhile."""
    a = origin("a")
    a.set_mode(hang())
    policy = HealthPolicy(interval=60.0, fail_threshold=3)
    pool = pool_of(a, operation_timeout=5.0, read_deadline=8.0, health=policy)
    track = track_on(PATH, DATA, "a")

    async def main() -> list[tuple[float, float, str]]:
        took: list[tuple[float, float, str]] = []

        async def one(delay: float) -> None:
            await trio.sleep(delay)
            start = trio.current_time()
            with pytest.raises(OriginError) as info:
                await pool.read(track, 0, 4096)
            took.append((delay, trio.current_time() - start, str(info.value)))

        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(one, i * 0.1)
        return took

    took = sorted(virtual(main))
    assert len(took) == 30
    # The first three ran out their operation timeout (that is how the verdict came) and
    # the origin was declared unhealthy at t=5.2: no read waited on past t=6.2 (without
    # the cut the last one, started at t=2.9, would have waited until t=7.9).
    ended = [started + t for started, t, _ in took]
    assert max(ended) <= 5.2 + pool.retry.hedge_after + 0.1, max(ended)
    abandoned = [m for _, _, m in took if "abandoned: the origin was declared unhealthy" in m]
    assert len(abandoned) >= 17  # every read started after t=1.2 (later ones' deadlines)
    assert pool.counters.abandoned_on_unhealthy == len(abandoned)


def test_a_slow_origin_declared_unhealthy_still_answers_within_the_grace() -> None:
    a = origin("a")
    policy = HealthPolicy(interval=60.0, fail_threshold=1)
    pool = pool_of(a, operation_timeout=5.0, read_deadline=8.0, health=policy)
    track = track_on(PATH, DATA, "a")

    async def main() -> bytes:
        a.set_mode(slow(2.0))
        async with trio.open_nursery() as nursery:
            result: list[bytes] = []

            async def read() -> None:
                result.append(await pool.read(track, 0, 10))

            nursery.start_soon(read)
            await trio.sleep(1.5)
            # The verdict comes from elsewhere (a failed check) while the read waits.
            pool.health.record_failure("a", OriginError(errno.ETIMEDOUT, "check", origin="a"))
        return result[0]

    assert virtual(main) == DATA[:10]  # answered at t=2.0, inside the 1 s grace


def test_callers_deadline_is_respected_when_shorter() -> None:
    a = origin("a")
    a.set_mode(hang())
    pool = pool_of(a, operation_timeout=5.0, read_deadline=30.0)

    async def main() -> float:
        start = trio.current_time()
        with trio.move_on_after(0.5):
            with pytest.raises(OriginError):
                await pool.read(track_on(PATH, DATA, "a"), 0, 10)
        return trio.current_time() - start

    took = virtual(main)
    assert took < 0.5  # the pool gave up (with its own error) before the caller's deadline


def test_slow_origin_within_deadline_is_served() -> None:
    a = origin("a")
    a.set_mode(slow(0.3))
    pool = pool_of(a, operation_timeout=1.0)
    assert virtual(lambda: pool.read(track_on(PATH, DATA, "a"), 0, 10)) == DATA[:10]


def test_offline_reads_fail_fast_and_recover_without_restart() -> None:
    a, b = origin("a"), origin("b")
    policy = HealthPolicy(interval=0.5, max_backoff=2.0, check_timeout=0.2, fail_threshold=2)
    pool = pool_of(a, b, health=policy)
    timings: dict[str, float] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.health.run)
            await trio.sleep(0.1)
            a.set_mode(hang())
            b.set_mode(error(errno.ENETUNREACH))
            while pool.mode is not Mode.OFFLINE:
                await trio.sleep(0.05)
            status = pool.status()
            assert status["mode"] == "offline"
            start = trio.current_time()
            with pytest.raises(OriginError) as info:
                await pool.read(TRACK, 0, 10)
            timings["offline_read"] = trio.current_time() - start
            assert info.value.errno == errno.EIO and "offline" in str(info.value)
            calls_before = a.calls["read"] + b.calls["read"]
            for _ in range(20):
                with pytest.raises(OriginError):
                    await pool.read(TRACK, 0, 10)
            assert a.calls["read"] + b.calls["read"] == calls_before  # origins not touched
            b.set_mode(HEALTHY)
            start = trio.current_time()
            while True:
                try:
                    data = await pool.read(TRACK, 0, 10)
                    break
                except OriginError:
                    await trio.sleep(0.1)
            timings["recovered_after"] = trio.current_time() - start
            assert data == DATA[:10]
            assert pool.status()["mode"] == "degraded"  # b back, a still hanging
            nursery.cancel_scope.cancel()

    virtual(main)
    assert timings["offline_read"] < 0.01
    # Nudged by the failing reads, b is re-checked within one interval, not the backoff.
    assert timings["recovered_after"] <= 1.0


def test_vanished_file_on_every_origin_is_an_error_not_a_hang() -> None:
    a, b = FaultyOrigin(MemoryOrigin("a", {})), FaultyOrigin(MemoryOrigin("b", {}))
    pool = pool_of(a, b)
    with pytest.raises(OriginError) as info:
        trio.run(pool.read, TRACK, 0, 10)
    assert info.value.errno == errno.ENOENT
    assert pool.health.state("a") is State.HEALTHY  # a missing file is not a sick server


def test_vanished_on_primary_is_served_by_mirror() -> None:
    a, b = FaultyOrigin(MemoryOrigin("a", {})), origin("b")
    pool = pool_of(a, b)
    assert trio.run(pool.read, TRACK, 0, 10) == DATA[:10]


def test_shrunk_file_fails_with_eio_and_a_clear_message(caplog) -> None:  # type: ignore[no-untyped-def]
    a = origin("a", DATA[:1000])
    pool = pool_of(a)
    with pytest.raises(OriginError) as info:
        trio.run(pool.read, track_on(PATH, DATA, "a"), 900, 500)
    assert info.value.errno == errno.EIO
    assert "changed since the last sync" in caplog.text and PATH in caplog.text


def test_permission_denied_is_passed_on_as_eacces() -> None:
    a = origin("a")
    a.set_mode(error(errno.EACCES, ops={"read"}))
    pool = pool_of(a)
    with pytest.raises(OriginError) as info:
        trio.run(pool.read, track_on(PATH, DATA, "a"), 0, 10)
    assert info.value.errno == errno.EACCES


def test_read_past_end_and_origins_without_the_version() -> None:
    a = origin("a")
    pool = pool_of(a)
    assert trio.run(pool.read, track_on(PATH, DATA, "a"), len(DATA), 10) == b""
    assert trio.run(pool.read, track_on(PATH, DATA, "a"), len(DATA) - 5, 10) == DATA[-5:]
    with pytest.raises(OriginError):
        trio.run(pool.read, track_on(PATH, DATA, "elsewhere"), 0, 10)


def test_status_reports_mode_origins_and_counters() -> None:
    a, b = origin("a"), origin("b")
    pool = pool_of(a, b)
    trio.run(pool.read, TRACK, 0, 10)
    status = pool.status()
    assert status["mode"] == "online"
    assert list(status["origins"]) == ["a", "b"]
    assert status["origins"]["a"]["url"] == "faulty+memory://a"
    assert status["origins"]["b"]["state"] == "healthy"
    assert status["reads"]["reads"] == 1
