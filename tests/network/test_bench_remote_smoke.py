"""Layer 3: the peer matrix benchmark still runs end to end (tiny library, one run, short
faults; the figures are not checked beyond every row being measured against every peer)
and the results page, its plots and the README's headline table are generated from it."""

from __future__ import annotations

import json
from pathlib import Path

from bench import page
from tests.support.bench_smoke import rows, run_bench
from tests.support.daemon import require_fuse
from tests.support.netns import require_root_network

TINY = {
    "MUSICFS_BENCH_REMOTE_SMALL": "10",
    "MUSICFS_BENCH_REMOTE_LARGE": "2",
    "MUSICFS_BENCH_REMOTE_MB": "2",
    "MUSICFS_BENCH_REPEAT": "1",
    "MUSICFS_BENCH_FAULT_REPEAT": "1",
    "MUSICFS_BENCH_FAULT_SECONDS": "2",
    "MUSICFS_BENCH_RECOVER_CAP": "10",
    "MUSICFS_BENCH_DROP_CACHES": "0",  # dropping would slow the whole machine down
}


def test_the_peer_matrix_runs_and_makes_the_page(tmp_path: Path) -> None:
    require_fuse()
    require_root_network()
    env = {**TINY, "MUSICFS_BENCH_DIR": str(tmp_path / "lib")}
    results = tmp_path / "results"
    report = run_bench("bench_remote", env, save_to=results, timeout=600)
    by_metric = rows(report)
    peers: dict[str, set[str]] = {}
    for row in report["rows"]:
        peers.setdefault(row["metric"], set()).add(row["baseline_name"])
    for metric in ("ls -R, cold", "ls -lR, warm", "sequential read of every file, cold"):
        assert peers[metric] == {"native", "sshfs", "rclone"}, metric
        assert by_metric[metric]["value"] > 0
    assert peers["library scan: MB sent by the server"] == {"sshfs", "rclone"}
    assert peers["sequential read of every file, cold over 100 Mbit/s"] == {"sshfs", "rclone"}
    for kind in ("blackholed", "server killed", "server frozen"):
        assert peers[f"{kind}: read latency max"] == {"sshfs", "rclone"}, kind
        assert by_metric[f"{kind}: recovered after the fault ended"]["value"] > 0
    assert peers["S3: sequential read of every file, cold"] == {"minio"}
    assert peers["peak RSS of the FUSE process (VmHWM)"] == {"sshfs", "rclone"}

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{page.MARK_START}\nstale table\n{page.MARK_END}\noutro\n")
    written = page.write(results, ["bench_remote"], "make bench", tmp_path / "docs", readme)
    text = written.read_text()
    assert "## Headline" in text and "| ls -lR, cold |" in text
    plots = sorted((tmp_path / "docs" / "benchmarks").glob("remote-*.png"))
    assert plots and all(p.stat().st_size > 1000 for p in plots)
    for png in plots:
        assert f"(benchmarks/{png.name})" in text
    saved = json.loads((tmp_path / "docs" / "benchmarks" / "remote.json").read_text())
    assert saved["rows"] == report["rows"]
    new = readme.read_text()
    assert "stale table" not in new and "| ls -lR, cold |" in new and new.endswith("outro\n")
