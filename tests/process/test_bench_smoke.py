"""Layer 2: the benchmarks still run (tiny sizes, warm caches; the figures are not checked,
only that every measurement is produced and the runner saves it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import require_fuse

ROOT = Path(__file__).resolve().parents[2]


def test_bench_runner_lists_and_runs_the_library_bench(tmp_path: Path) -> None:
    require_fuse()
    listed = subprocess.run(
        [sys.executable, "-m", "bench", "--list"], cwd=ROOT, capture_output=True, text=True
    )
    assert "bench_library" in listed.stdout.split()
    env = {
        **os.environ,
        "MUSICFS_BENCH_TRACKS": "40",
        "MUSICFS_BENCH_LARGE": "1",
        "MUSICFS_BENCH_LARGE_MB": "1",
        "MUSICFS_BENCH_DIR": str(tmp_path / "cache"),
        # Dropping the page cache would slow everything else on the machine down.
        "MUSICFS_BENCH_DROP_CACHES": "0",
    }
    for run in (1, 2):  # the second run reuses the generated library
        proc = subprocess.run(
            [sys.executable, "-c", SMOKE, str(tmp_path / f"results{run}")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert report["setup"]["tracks"] == 40
        assert (report["setup"]["generated_in_s"] is None) == (run == 2)
        metrics = {row["metric"]: row for row in report["rows"]}
        assert metrics["scan throughput (fresh catalog)"]["baseline"] > 0
        assert metrics["read every file (`cat`)"]["slowdown"] > 0
        assert metrics["daemon peak RSS (VmHWM)"]["value"] > 10
        assert (tmp_path / f"results{run}" / "library-latest.md").exists()


SMOKE = """
import json, sys
from pathlib import Path
from bench import bench_library
report = bench_library.main()
report.save(Path(sys.argv[1]))
print(json.dumps(report.to_json()))
"""
