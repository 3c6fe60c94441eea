"""The daemon caps glibc's malloc arenas so freed chunk buffers do not pile up per thread."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# A child process: arenas are per process and cannot be reset once created. Eight
# threads allocate and free 1 MiB buffers at once; malloc_info() then lists one <heap>
# per arena in use.
CHILD = textwrap.dedent(
    """
    import ctypes, re, sys, tempfile, threading
    from musicfs.service.allocator import limit_malloc_arenas

    capped = limit_malloc_arenas() if sys.argv[1] == "capped" else False
    start = threading.Barrier(8)

    def churn():
        start.wait()
        for _ in range(50):
            bufs = [bytearray(1 << 20) for _ in range(4)]
            del bufs

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc = ctypes.CDLL(None)
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    with tempfile.NamedTemporaryFile() as out:
        fp = libc.fopen(out.name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        heaps = len(re.findall(rb"<heap nr=", open(out.name, "rb").read()))
    print(capped, heaps)
    """
)


def _arenas(mode: str, **env: str) -> tuple[bool, int]:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        capture_output=True,
        text=True,
        check=True,
        env=environ,
        timeout=60,
    ).stdout.split()
    return out[0] == "True", int(out[1])


def _glibc() -> bool:
    import platform

    return platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not _glibc(), reason="malloc arenas are a glibc feature")
def test_the_cap_holds_the_arenas_to_two() -> None:
    capped, heaps = _arenas("capped")
    assert capped
    assert heaps <= 2
    # Without the cap the same churn spreads over more arenas: the cap is what holds it.
    _, uncapped_heaps = _arenas("default")
    assert uncapped_heaps > 2


@pytest.mark.skipif(not _glibc(), reason="malloc arenas are a glibc feature")
def test_an_operators_malloc_arena_max_wins() -> None:
    capped, heaps = _arenas("capped", MALLOC_ARENA_MAX="4")
    assert not capped
    assert heaps <= 4
