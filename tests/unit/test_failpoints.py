import errno
import os
import subprocess
import sys

import pytest
import trio

from musicfs import failpoints
from musicfs.failpoints import FailpointPanic, async_fail_point, asyncio_fail_point, fail_point


def test_disabled_failpoint_does_nothing() -> None:
    fail_point("nothing.here")


def test_error_with_errno_name_and_number() -> None:
    failpoints.set("a", "error(ENOSPC)")
    with pytest.raises(OSError) as info:
        fail_point("a")
    assert info.value.errno == errno.ENOSPC
    failpoints.set("a", "error(5)")
    with pytest.raises(OSError, match="failpoint a"):
        fail_point("a")


def test_times_and_after_modifiers() -> None:
    failpoints.set("b", "2*after(1)->panic")
    fail_point("b")  # let through
    for _ in range(2):
        with pytest.raises(FailpointPanic):
            fail_point("b")
    fail_point("b")  # exhausted
    assert failpoints.hits("b") == 4


def test_configure_from_env_string_and_bad_specs() -> None:
    failpoints.configure("x=off; y = sleep(1)")
    fail_point("x")
    fail_point("y")
    for bad in ("x", "x=explode", "x=error(NOTANERRNO)"):
        with pytest.raises(ValueError):
            failpoints.configure(bad)


def test_async_sleep_does_not_block_the_loop() -> None:
    failpoints.set("slow", "sleep(200)")
    ticks = []

    async def main() -> None:
        async with trio.open_nursery() as n:

            async def ticker() -> None:
                for _ in range(5):
                    ticks.append(trio.current_time())
                    await trio.sleep(0.02)

            n.start_soon(ticker)
            await async_fail_point("slow")

    trio.run(main)
    assert len(ticks) == 5


def test_asyncio_sleep_does_not_block_the_loop() -> None:
    import asyncio

    failpoints.set("slow", "1*sleep(200)")
    ticks = []

    async def ticker() -> None:
        for _ in range(5):
            ticks.append(1)
            await asyncio.sleep(0.02)

    async def main() -> None:
        task = asyncio.ensure_future(ticker())
        await asyncio_fail_point("slow")
        assert len(ticks) == 5  # the loop ran the ticker while the failpoint slept
        await asyncio_fail_point("slow")  # fired once only: no second sleep
        await task

    asyncio.run(main())
    assert failpoints.hits("slow") == 2


def test_exit_action_ends_the_process_immediately() -> None:
    code = "from musicfs.failpoints import fail_point; fail_point('boom'); print('survived')"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "MUSICFS_FAILPOINTS": "boom=exit(9)"},
        check=False,
    )
    assert proc.returncode == 9 and "survived" not in proc.stdout
