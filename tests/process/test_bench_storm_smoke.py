"""Layer 2: the storm benchmark still runs (fewer reads; the figures are not checked beyond
every measurement being produced and every hung read answering EIO)."""

from __future__ import annotations

from tests.support.bench_smoke import rows, run_bench
from tests.support.daemon import require_fuse


def test_storm_bench_produces_every_figure() -> None:
    require_fuse()
    report = run_bench("bench_storm", {"MUSICFS_BENCH_STORM_READS": "30"})
    figures = rows(report)
    for label in ("p50", "p99", "max"):
        row = figures[f"cached read during the storm, {label}"]
        assert row["value"] > 0 and row["baseline"] > 0
    assert figures["uncached read -> EIO, max"]["value"] > 0
    assert "every uncached read answered EIO (30 and 30 of 30)" in report["notes"][0]
