"""Layer 2: the cache benchmark still runs (tiny sizes; the figures are not checked, only
that every measurement is produced)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.daemon import require_fuse

ROOT = Path(__file__).resolve().parents[2]
SMOKE = """
import json
from bench import bench_cache
print(json.dumps(bench_cache.main().to_json()))
"""


def test_cache_bench_produces_every_figure() -> None:
    require_fuse()
    env = {
        **os.environ,
        "MUSICFS_BENCH_CACHE_FILES": "2",
        "MUSICFS_BENCH_CACHE_FILE_MB": "2",
        "MUSICFS_BENCH_CACHE_TTFB_FILES": "2",
    }
    proc = subprocess.run(
        [sys.executable, "-c", SMOKE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {row["metric"]: row for row in json.loads(proc.stdout)["rows"]}
    assert rows["hit: sequential read, fresh mount"]["value"] > 0
    assert "0 origin fetches" in rows["hit: sequential read, fresh mount"]["note"]
    assert rows["hash verification share of the hit read"]["value"] > 0
    assert rows["time to first byte, miss"]["value"] > 0
    assert rows["time to first byte, hit"]["value"] > 0
    assert rows["hit read without the in-memory chunk cache"]["baseline"] > 0
