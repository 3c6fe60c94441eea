"""PNG plots of a saved report: one grouped bar chart per unit (seconds, MB/s, ms, ...),
a bar per peer for each metric, whiskers spanning the repeated runs."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

OURS = "MusicFS"


def series(report: dict[str, Any]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """unit -> metric -> peer -> samples (the median alone when a row kept no runs)."""
    out: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    for row in report["rows"]:
        by_peer = out[row["unit"]][row["metric"]]
        by_peer.setdefault(OURS, row.get("samples") or [row["value"]])
        if row.get("baseline") is not None:
            peer = row["baseline_name"] or "baseline"
            by_peer[peer] = row.get("baseline_samples") or [row["baseline"]]
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def plot_report(report: dict[str, Any], dest: Path) -> list[Path]:
    """Write ``<report>-<unit>.png`` files into ``dest``; their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest.mkdir(parents=True, exist_ok=True)
    made = []
    for unit, metrics in series(report).items():
        peers: list[str] = []
        for by_peer in metrics.values():
            peers += [p for p in by_peer if p not in peers]
        names = list(metrics)
        width = 0.8 / len(peers)
        fig, ax = plt.subplots(figsize=(10, 0.9 + 0.55 * len(names) * max(1, len(peers) / 2)))
        values_seen: list[float] = []
        for k, peer in enumerate(peers):
            ys, medians, lows, highs = [], [], [], []
            for i, name in enumerate(names):
                samples = [v for v in metrics[name].get(peer, []) if v == v]  # drop NaN
                if not samples:
                    continue
                mid = sorted(samples)[len(samples) // 2]
                ys.append(i + (k - (len(peers) - 1) / 2) * width)
                medians.append(mid)
                lows.append(mid - min(samples))
                highs.append(max(samples) - mid)
                values_seen += samples
            ax.barh(ys, medians, height=width, label=peer, xerr=[lows, highs], capsize=2)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels([_wrap(n) for n in names], fontsize=8)
        ax.invert_yaxis()
        positive = [v for v in values_seen if v > 0]
        if positive and max(positive) / min(positive) > 50:
            ax.set_xscale("log")
        ax.set_xlabel(unit)
        ax.set_title(f"{report['title']} ({unit})", fontsize=10)
        ax.legend(fontsize=8, loc="best")
        ax.grid(axis="x", alpha=0.3)
        fig.tight_layout()
        path = dest / f"{report['name']}-{_slug(unit) or 'figures'}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path)
    return made


def _wrap(text: str, width: int = 38) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    return "\n".join(lines[: math.ceil(len(text) / width) + 1])
