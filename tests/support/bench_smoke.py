"""Run one benchmark module in a child process (as ``python -m bench`` would) and return
its report as JSON, for the layer-2 smoke tests that keep the benches working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
_CHILD = """
import importlib, json, sys
from pathlib import Path
report = importlib.import_module("bench." + sys.argv[1]).main()
if len(sys.argv) > 2:
    report.save(Path(sys.argv[2]))
print(json.dumps(report.to_json()))
"""


def run_bench(
    module: str, env: dict[str, str], *, save_to: Path | None = None, timeout: float = 300
) -> dict[str, Any]:
    """``bench.<module>.main()`` with ``env`` on top of ours; fails the test with the
    child's stderr if it does not succeed."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, module, *([str(save_to)] if save_to else [])],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def rows(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["metric"]: row for row in report["rows"]}
