"""The bench report's table shows a baseline of zero (a peer that kept nothing) as a
figure, not as a missing baseline."""

from __future__ import annotations

from bench import Report


def test_a_zero_baseline_is_shown() -> None:
    report = Report("t", "T")
    report.add_runs(
        "kept", [0.9, 0.95], "fraction", baseline_samples=[0.0, 0.0], baseline_name="lru"
    )
    row = report.markdown().splitlines()[-1]
    assert "0 fraction" in row and "(lru)" in row


def test_no_baseline_is_a_dash() -> None:
    report = Report("t", "T")
    report.add("kept", 1.0, "fraction")
    assert report.markdown().splitlines()[-1].split("|")[3].strip() == "—"
