"""Layer 1 (gap 2.6): named background tasks, restart policies, escalation, states."""

from __future__ import annotations

import itertools
import logging

import pytest
import trio
import trio.testing

from musicfs.service.supervisor import Policy, Supervisor, SupervisorClosed


def run_virtual(fn) -> None:  # type: ignore[no-untyped-def]
    """Run on trio's virtual clock: backoff seconds pass instantly but in order."""
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_best_effort_crash_is_logged_with_its_name_and_marked_failed(caplog) -> None:
    caplog.set_level(logging.ERROR)

    async def main() -> None:
        sup = Supervisor()
        survivor_ran = trio.Event()

        async def broken() -> None:
            await trio.sleep(0.1)
            raise ValueError("index exploded")

        async def survivor() -> None:
            await trio.sleep(1)
            survivor_ran.set()
            await trio.sleep_forever()

        sup.start("indexer", broken, Policy.BEST_EFFORT)
        sup.start("other", survivor, Policy.BEST_EFFORT)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await survivor_ran.wait()
            status = sup.status()
            assert status["indexer"]["state"] == "failed"
            assert status["indexer"]["restarts"] == 0
            assert status["indexer"]["last_error"] == "ValueError: index exploded"
            assert status["other"]["state"] == "running"
            await sup.close()

    run_virtual(main)
    record = next(r for r in caplog.records if "indexer" in r.getMessage())
    assert record.exc_info is not None and "index exploded" in str(record.exc_info[1])
    assert "Traceback" in caplog.text and "index exploded" in caplog.text


def test_critical_task_is_restarted_with_growing_backoff() -> None:
    starts: list[float] = []

    async def main() -> None:
        sup = Supervisor(backoff_initial=1.0, backoff_max=8.0, max_failures=10)

        async def health() -> None:
            starts.append(trio.current_time())
            if len(starts) <= 3:
                raise OSError("probe failed")
            await trio.sleep_forever()

        sup.start("health", health, Policy.CRITICAL)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(60)
            info = sup.status()["health"]
            assert info["state"] == "running"
            assert (info["restarts"], info["failures"]) == (3, 3)
            await sup.close()
        assert sup.status()["health"]["state"] == "cancelled"

    run_virtual(main)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert gaps == [1.0, 2.0, 4.0]


def test_critical_task_failing_repeatedly_escalates() -> None:
    escalated: list[str] = []

    async def main() -> None:
        sup = Supervisor(
            on_escalate=lambda name, exc: escalated.append(f"{name}: {exc}"),
            backoff_initial=0.5,
            max_failures=3,
            failure_window=60,
        )

        async def eviction() -> None:
            raise RuntimeError("disk on fire")

        sup.start("eviction", eviction, Policy.CRITICAL)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(30)
            assert sup.status()["eviction"]["state"] == "failed"
            assert sup.status()["eviction"]["failures"] == 3
            await sup.close()

    run_virtual(main)
    assert escalated == ["eviction: disk on fire"]


def test_failures_spread_out_in_time_do_not_escalate() -> None:
    escalated: list[str] = []

    async def main() -> None:
        sup = Supervisor(
            on_escalate=lambda name, exc: escalated.append(name),
            backoff_initial=0.1,
            backoff_max=0.1,
            max_failures=3,
            failure_window=10,
        )
        runs = 0

        async def flaky() -> None:
            nonlocal runs
            runs += 1
            await trio.sleep(20)  # works for a while, then fails
            raise RuntimeError("flaky")

        sup.start("flaky", flaky, Policy.CRITICAL)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(200)
            assert runs >= 8
            await sup.close()

    run_virtual(main)
    assert escalated == []


def test_tasks_queued_before_run_start_with_it_and_close_refuses_new_work() -> None:
    events: list[str] = []

    async def main() -> None:
        sup = Supervisor()

        async def sync() -> None:
            events.append("sync started")
            try:
                await trio.sleep_forever()
            finally:
                events.append("sync cancelled")

        async def finishes() -> None:
            events.append("one-shot ran")

        sup.start("sync", sync)
        sup.start("one-shot", finishes)
        assert sup.status()["sync"]["state"] == "pending"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(1)
            assert sup.status()["one-shot"]["state"] == "done"
            with pytest.raises(ValueError, match="already running"):
                sup.start("sync", sync)
            assert await sup.close(timeout=5)
            events.append("closed")
            with pytest.raises(SupervisorClosed):
                sup.start("late", sync)

    run_virtual(main)
    # trio starts sibling tasks in no fixed order; cancellation and close are ordered.
    assert sorted(events[:2]) == ["one-shot ran", "sync started"]
    assert events[2:] == ["sync cancelled", "closed"]


def test_close_gives_up_waiting_for_a_task_that_ignores_cancellation(caplog) -> None:
    async def main() -> None:
        sup = Supervisor()

        async def stubborn() -> None:
            with trio.CancelScope(shield=True):
                await trio.sleep(100)

        sup.start("stubborn", stubborn)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(1)
            started = trio.current_time()
            assert not await sup.close(timeout=3)
            assert trio.current_time() - started == pytest.approx(3)
            nursery.cancel_scope.cancel()

    run_virtual(main)
    assert "stubborn did not stop within 3.0s" in caplog.text


def test_stop_cancels_one_task_so_it_can_start_again() -> None:
    runs: list[str] = []

    async def main() -> None:
        sup = Supervisor()

        def monitor(label: str):  # type: ignore[no-untyped-def]
            async def run() -> None:
                runs.append(label)
                await trio.sleep_forever()

            return run

        sup.start("health", monitor("old pool"), Policy.CRITICAL)
        sup.start("sync", monitor("sync"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sup.run)
            await trio.sleep(1)
            await sup.stop("health")
            assert sup.status()["health"]["state"] == "cancelled"
            sup.start("health", monitor("new pool"), Policy.CRITICAL)
            await trio.sleep(1)
            assert sup.status()["health"]["state"] == "running"
            assert sup.status()["sync"]["state"] == "running"
            await sup.close()

    run_virtual(main)
    assert sorted(runs) == ["new pool", "old pool", "sync"]
