"""Benchmarks: ``python -m bench [name...]`` (``make bench``) runs ``main()`` of every
``bench/bench_*.py`` module, or only the named ones.

A benchmark compares MusicFS with a baseline measured in the same run and returns a
``Report``; the runner saves it under ``bench/results/`` (JSON, plus the markdown table) and
prints the table. A ``main()`` that returns nothing has done its own reporting.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"


@dataclass
class Row:
    """One measured figure, with the baseline it is compared to when there is one.

    ``value`` and ``baseline`` are medians when the row was measured more than once; the
    repeated runs are kept in ``samples`` and ``baseline_samples`` (their range is the
    spread the results page shows)."""

    metric: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    # How MusicFS compares: ``value / baseline`` for times, ``baseline / value`` when
    # ``higher_is_better`` -- either way above 1 means MusicFS is that many times slower.
    higher_is_better: bool = False
    note: str = ""
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)

    @property
    def slowdown(self) -> float | None:
        if self.baseline is None or not self.value or not self.baseline:
            return None
        return self.baseline / self.value if self.higher_is_better else self.value / self.baseline

    @property
    def peer_wins(self) -> bool:
        """The baseline is better by more than the noise of one run (10 %)."""
        return self.slowdown is not None and self.slowdown > 1.1


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def spread(samples: list[float]) -> str:
    """``min–max`` of repeated runs, or "" for a single one."""
    if len(samples) < 2:
        return ""
    return f"{_fmt(min(samples))}–{_fmt(max(samples))}"


@dataclass
class Report:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)  # what was measured, and how
    environment: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, metric: str, value: float, unit: str, **kw: Any) -> Row:
        row = Row(metric, value, unit, **kw)
        self.rows.append(row)
        return row

    def add_runs(
        self,
        metric: str,
        samples: list[float],
        unit: str,
        baseline_samples: list[float] | None = None,
        **kw: Any,
    ) -> Row:
        """A row from repeated runs: the medians, with every run kept."""
        base = baseline_samples or []
        return self.add(
            metric,
            median(samples),
            unit,
            baseline=median(base) if base else None,
            samples=list(samples),
            baseline_samples=list(base),
            **kw,
        )

    def markdown(self) -> str:
        lines = [
            f"**{self.title}**",
            "",
            "| metric | MusicFS | baseline | ratio | note |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for r in self.rows:
            ours = f"{_fmt(r.value)} {r.unit}" + _range(r.samples)
            base = (
                f"{_fmt(r.baseline)} {r.unit}{_range(r.baseline_samples)} ({r.baseline_name})"
                if r.baseline is not None
                else "—"
            )
            ratio = f"{r.slowdown:.2f}×" if r.slowdown is not None else "—"
            lines.append(f"| {r.metric} | {ours} | {base} | {ratio} | {r.note} |")
        lines += ["", *(f"- {n}" for n in self.notes)] if self.notes else []
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for row, raw in zip(self.rows, data["rows"], strict=True):
            raw["slowdown"] = row.slowdown
        return data

    def save(self, directory: Path = RESULTS_DIR) -> Path:
        """Write ``<name>-<timestamp>.json`` and ``<name>-latest.{json,md}``."""
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False)
        path = directory / f"{self.name}-{stamp}.json"
        path.write_text(text + "\n")
        (directory / f"{self.name}-latest.json").write_text(text + "\n")
        (directory / f"{self.name}-latest.md").write_text(self.markdown() + "\n")
        return path


def _range(samples: list[float]) -> str:
    return f" ({spread(samples)})" if len(samples) > 1 else ""


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def environment() -> dict[str, Any]:
    """What the figures depend on: the machine, its load, and the code measured."""
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "commit": commit,
        "command": " ".join([Path(sys.executable).name, "-m", "bench", *sys.argv[1:]]),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def drop_page_cache() -> bool:
    """Write back and drop the page cache, dentries and inodes (needs root). False if that
    is not possible here; the report says which runs were cold."""
    if os.environ.get("MUSICFS_BENCH_DROP_CACHES", "1") == "0":
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` holds the wall-clock seconds."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)
