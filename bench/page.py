"""``docs/benchmarks.md`` from the saved reports: the machine, the exact commands, a
headline table, then every scenario's table (medians and the range of repeated runs),
its plots and notes. The JSON the page was made from is copied next to it, and the
README's headline table (between ``<!-- bench:headline -->`` markers) is rewritten.

``python -m bench --page`` regenerates the page from ``bench/results/*-latest.json``
without measuring anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from bench import ROOT, _fmt, spread
from bench.plots import plot_report

DOCS = ROOT / "docs"
README = ROOT / "README.md"
MARK_START, MARK_END = "<!-- bench:headline -->", "<!-- /bench:headline -->"

# (metric, unit) of the remote matrix that make the headline, in order.
HEADLINE = (
    "ls -lR, cold",
    "ls -lR, warm",
    "sequential read of every file, cold",
    "sequential read of every file, warm",
    "time to first byte (open + 128 KiB), cold",
    "16 parallel readers, cold",
    "library scan (ffprobe of every track), cold",
    "library scan: MB sent by the server",
    "sequential read of every file, cold over 100 Mbit/s",
    "blackholed: read latency max",
    "blackholed: recovered after the fault ended",
    "server frozen: read latency max",
    "server killed: recovered after the fault ended",
    "peak RSS of the FUSE process (VmHWM)",
    "S3: sequential read of every file, cold",
    "S3: time to first byte (open + 128 KiB), cold",
)
PEERS = ("native", "sshfs", "rclone", "minio")


def load(results: Path, names: list[str]) -> list[dict[str, Any]]:
    reports = []
    for name in names:
        path = results / f"{name.removeprefix('bench_')}-latest.json"
        if path.exists():
            reports.append(json.loads(path.read_text()))
    return reports


def _cell(value: float | None, samples: list[float], unit: str) -> str:
    if value is None:
        return "—"
    text = f"{_fmt(value)} {unit}"
    return f"{text} ({spread(samples)})" if len(samples) > 1 else text


def grouped(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Rows merged by metric: MusicFS's figure once, then each peer's next to it."""
    merged: dict[str, dict[str, Any]] = {}
    for row in report["rows"]:
        entry = merged.setdefault(
            row["metric"],
            {
                "unit": row["unit"],
                "ours": (row["value"], row.get("samples") or []),
                "peers": {},
                "notes": [],
            },
        )
        if row.get("baseline") is not None:
            entry["peers"][row["baseline_name"] or "baseline"] = (
                row["baseline"],
                row.get("baseline_samples") or [],
                row.get("slowdown"),
            )
        if row.get("note"):
            entry["notes"].append(row["note"])
    return list(merged.items())


def table(report: dict[str, Any]) -> list[str]:
    rows = grouped(report)
    peers: list[str] = []
    for _, entry in rows:
        peers += [p for p in entry["peers"] if p not in peers]
    head = ["metric", "MusicFS", *(f"{p} (ratio)" for p in peers), "note"]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 2) + " --- |"]
    for metric, entry in rows:
        unit = entry["unit"]
        cells = [metric, _cell(*entry["ours"], unit)]
        for peer in peers:
            if peer not in entry["peers"]:
                cells.append("—")
                continue
            value, samples, ratio = entry["peers"][peer]
            text = _cell(value, samples, unit)
            cells.append(f"{text} ({ratio:.2f}×)" if ratio is not None else text)
        cells.append("; ".join(entry["notes"]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def headline(report: dict[str, Any]) -> list[str]:
    """The remote matrix's key rows: MusicFS, then each peer and how MusicFS compares."""
    rows = dict(grouped(report))
    lines = [
        "| | MusicFS | " + " | ".join(PEERS) + " |",
        "| --- | ---: |" + " ---: |" * len(PEERS),
    ]
    for metric in HEADLINE:
        entry = rows.get(metric)
        if entry is None:
            continue
        unit = entry["unit"]
        cells = [metric, _capped(entry, "MusicFS") + f"{_fmt(entry['ours'][0])} {unit}"]
        for peer in PEERS:
            if peer in entry["peers"]:
                value, _, ratio = entry["peers"][peer]
                text = _capped(entry, peer) + f"{_fmt(value)} {unit}"
                cells.append(text + (f" ({ratio:.2f}×)" if ratio else ""))
            else:
                cells.append("—")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _capped(entry: dict[str, Any], who: str) -> str:
    """ "≥ " when ``who``'s figure is a cap it reached (no good read before it)."""
    return "≥ " if any(f"{who}: no good" in n for n in entry["notes"]) else ""


def machine(reports: list[dict[str, Any]]) -> list[str]:
    envs = [r.get("environment", {}) for r in reports]
    first = envs[0] if envs else {}
    loads = [
        f"{r['name']}: {e.get('loadavg_at_start', ['?'])[0]:.2f}"
        for r, e in zip(reports, envs, strict=True)
        if isinstance(e.get("loadavg_at_start"), list)
    ]
    runs = [
        f"{r['name']} `{e.get('commit', '?')}` {str(e.get('time', '?'))[:16].replace('T', ' ')}"
        for r, e in zip(reports, envs, strict=True)
    ]
    return [
        f"- host `{first.get('host', '?')}`, {first.get('cpus', '?')} CPUs, kernel "
        f"{first.get('kernel', '?')}, Python {first.get('python', '?')}",
        "- each scenario's commit and start (UTC): " + ", ".join(runs),
        "- load average (1 min) when each scenario started: " + ", ".join(loads),
        "- the machine was shared with other work while these ran (other sessions' builds "
        "and tests on the same 2 cores): read every figure with its range, and expect a "
        "quiet machine to be faster, peers and MusicFS alike",
    ]


def write(
    results: Path,
    names: list[str],
    command: str,
    docs: Path = DOCS,
    readme: Path | None = README,
) -> Path:
    """``docs/benchmarks.md`` and ``docs/benchmarks/`` (plots, JSON); the README's
    headline table when ``readme`` is given."""
    reports = load(results, names)
    if not reports:
        raise SystemExit(f"no saved reports in {results}: run `python -m bench` first")
    page, assets = docs / "benchmarks.md", docs / "benchmarks"
    assets.mkdir(parents=True, exist_ok=True)
    out = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench` (`make bench`) from the JSON beside this page "
        "([docs/benchmarks/](benchmarks/)); do not edit by hand -- "
        "`python -m bench --page` rebuilds it from `bench/results/`.",
        "",
        "## The machine and the commands",
        "",
        *machine(reports),
        "",
        "```sh",
        "scripts/setup-debian.sh bench   # sshfs, rclone, ffmpeg, nftables, iproute2 (tc)",
        command,
        *(f"{r['environment'].get('command', '')}   # {r['name']}" for r in reports),
        "```",
        "",
    ]
    remote = next((r for r in reports if r["name"] == "remote"), None)
    if remote is not None:
        out += [
            "## Headline",
            "",
            "MusicFS over SFTP against the same sshd through sshfs and rclone, the native "
            "folder, and MusicFS over S3 against the minio client; medians (ratio: how "
            "many times slower MusicFS is, below 1 = faster; ≥: nothing within the cap).",
            "",
            *headline(remote),
            "",
        ]
    for report in reports:
        shutil.copyfile(
            results / f"{report['name']}-latest.json", assets / f"{report['name']}.json"
        )
        out += [f"## {report['title']}", "", *table(report), ""]
        out += [f"- {note}" for note in report.get("notes", [])]
        setup = {k: v for k, v in report.get("setup", {}).items() if k != "samples_s"}
        out += ["", f"Setup: `{json.dumps(setup, ensure_ascii=False)}`", ""]
        for png in plot_report(report, assets):
            out += [f"![{report['name']} {png.stem}](benchmarks/{png.name})", ""]
    page.write_text("\n".join(out).rstrip() + "\n")
    if remote is not None and readme is not None:
        update_readme(readme, headline(remote))
    return page


def update_readme(readme: Path, lines: list[str]) -> None:
    text = readme.read_text()
    if MARK_START not in text or MARK_END not in text:
        return
    before, rest = text.split(MARK_START, 1)
    _, after = rest.split(MARK_END, 1)
    readme.write_text(before + MARK_START + "\n" + "\n".join(lines) + "\n" + MARK_END + after)
