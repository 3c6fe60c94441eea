"""Layer 1 (gap 2.2): no exception in any thread or task dies without a logged traceback
naming where it happened."""

from __future__ import annotations

import logging
import sys
import threading

import pytest
import trio

from musicfs.service import crashlog


@pytest.fixture
def hooks():  # type: ignore[no-untyped-def]
    saved = (sys.excepthook, threading.excepthook, sys.unraisablehook)
    crashlog.install_hooks()
    yield
    sys.excepthook, threading.excepthook, sys.unraisablehook = saved


def test_uncaught_exception_in_a_thread_is_logged_with_its_name(hooks, caplog) -> None:
    caplog.set_level(logging.ERROR)

    def boom() -> None:
        raise KeyError("lost chunk")

    t = threading.Thread(target=boom, name="cache-writer")
    t.start()
    t.join()
    record = next(r for r in caplog.records if "cache-writer" in r.getMessage())
    assert record.levelno == logging.CRITICAL
    assert record.exc_info is not None and record.exc_info[0] is KeyError
    assert "Traceback" in caplog.text and "lost chunk" in caplog.text


def test_uncaught_exception_in_the_main_thread_is_logged(hooks, caplog) -> None:
    try:
        raise ValueError("main went wrong")
    except ValueError:
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
    assert "uncaught exception in the main thread" in caplog.text
    assert "main went wrong" in caplog.text


def test_a_crashing_trio_task_is_logged_with_its_name(caplog) -> None:
    async def index() -> None:
        await trio.sleep(0)
        raise RuntimeError("tantivy said no")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crashlog.named_task("search-indexer", index), name="x")

    with pytest.raises(BaseExceptionGroup):
        trio.run(main)
    assert "task search-indexer crashed" in caplog.text
    assert "tantivy said no" in caplog.text and "Traceback" in caplog.text


def test_cancellation_is_not_reported_as_a_crash(caplog) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(crashlog.named_task("idle", trio.sleep_forever))
            await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert "crashed" not in caplog.text


def test_task_stacks_name_every_task_and_where_it_waits() -> None:
    async def parked() -> None:
        await trio.sleep_forever()

    async def main() -> list[str]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parked, name="eviction")
            await trio.sleep(0.01)
            lines = crashlog.task_stacks()
            nursery.cancel_scope.cancel()
        return lines

    lines = trio.run(main)
    at = next(i for i, line in enumerate(lines) if line.strip() == "task eviction")
    assert "in parked" in lines[at + 1]
