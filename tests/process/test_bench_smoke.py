"""Layer 2: the benchmarks still run (tiny sizes, warm caches; the figures are not checked,
only that every measurement is produced and the runner saves it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.bench_smoke import ROOT, rows, run_bench
from tests.support.daemon import require_fuse


def test_bench_runner_lists_and_runs_the_library_bench(tmp_path: Path) -> None:
    require_fuse()
    listed = subprocess.run(
        [sys.executable, "-m", "bench", "--list"], cwd=ROOT, capture_output=True, text=True
    )
    assert "bench_library" in listed.stdout.split()
    env = {
        "MUSICFS_BENCH_TRACKS": "40",
        "MUSICFS_BENCH_LARGE": "1",
        "MUSICFS_BENCH_LARGE_MB": "1",
        "MUSICFS_BENCH_DIR": str(tmp_path / "cache"),
        # Dropping the page cache would slow everything else on the machine down.
        "MUSICFS_BENCH_DROP_CACHES": "0",
    }
    for run in (1, 2):  # the second run reuses the generated library
        report = run_bench("bench_library", env, save_to=tmp_path / f"results{run}", timeout=120)
        assert report["setup"]["tracks"] == 40
        assert (report["setup"]["generated_in_s"] is None) == (run == 2)
        metrics = rows(report)
        assert metrics["scan throughput (fresh catalog)"]["baseline"] > 0
        assert metrics["read every file (`cat`)"]["slowdown"] > 0
        assert metrics["daemon peak RSS (VmHWM)"]["value"] > 10
        assert (tmp_path / f"results{run}" / "library-latest.md").exists()
