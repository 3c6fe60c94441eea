"""Layer 2: the cache benchmark still runs (tiny sizes; the figures are not checked, only
that every measurement is produced)."""

from __future__ import annotations

from tests.support.bench_smoke import rows, run_bench
from tests.support.daemon import require_fuse


def test_cache_bench_produces_every_figure() -> None:
    require_fuse()
    figures = rows(
        run_bench(
            "bench_cache",
            {
                "MUSICFS_BENCH_CACHE_FILES": "2",
                "MUSICFS_BENCH_CACHE_FILE_MB": "2",
                "MUSICFS_BENCH_CACHE_TTFB_FILES": "2",
            },
        )
    )
    assert figures["hit: sequential read, fresh mount"]["value"] > 0
    assert "0 origin fetches" in figures["hit: sequential read, fresh mount"]["note"]
    assert figures["hash verification share of the hit read"]["value"] > 0
    assert figures["time to first byte, miss"]["value"] > 0
    assert figures["time to first byte, hit"]["value"] > 0
    assert figures["hit read without the in-memory chunk cache"]["baseline"] > 0
