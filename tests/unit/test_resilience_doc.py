"""docs/RESILIENCE.md names tests and failpoints; it must not drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "RESILIENCE.md").read_text()


def test_every_test_the_matrix_names_exists() -> None:
    defined = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined.update(re.findall(r"^(?:async )?def (test_\w+)", path.read_text(), re.M))
    for ref in re.findall(r"`(\w+/test_\w+\.py)(?:::(test_\w+))?", DOC):
        file, name = ref
        assert (ROOT / "tests" / file).is_file(), file
        if name:
            source = (ROOT / "tests" / file).read_text()
            assert re.search(rf"def {name}\b", source), f"{file}::{name}"
    named = set(re.findall(r"::(test_\w+)", DOC))
    assert named <= defined, named - defined


def test_every_failpoint_in_the_code_is_listed() -> None:
    in_code = set()
    for path in (ROOT / "musicfs").rglob("*.py"):
        in_code.update(re.findall(r'fail_point\(\s*"([^"]+)"', path.read_text()))
    assert in_code, "no failpoints found: the pattern no longer matches the code"
    listed = set(re.findall(r"`([a-z0-9_]+(?:\.[a-z0-9_]+)+)`", DOC))
    assert in_code <= listed, sorted(in_code - listed)
