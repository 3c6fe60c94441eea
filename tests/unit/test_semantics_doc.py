"""docs/SEMANTICS.md backs every promise with tests; it, and the reader and store's
developer note, must not name a test that does not exist (as docs/RESILIENCE.md, checked
by test_resilience_doc.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "SEMANTICS.md").read_text()
# `layer/test_file.py::test_name` (a parametrized test is named without its parameters).
REFERENCE = re.compile(r"`(?:tests/)?(\w+/test_\w+\.py)::(test_\w+)`")
NOTES = ("SEMANTICS.md", "reader-and-store.md")


def test_the_page_names_tests() -> None:
    assert len(REFERENCE.findall(DOC)) >= 30


@pytest.mark.parametrize("page", NOTES)
def test_every_test_the_page_names_exists(page: str) -> None:
    text = (ROOT / "docs" / page).read_text()
    assert len(REFERENCE.findall(text)) >= 5
    missing = []
    for file, name in REFERENCE.findall(text):
        path = ROOT / "tests" / file
        if not path.is_file() or not re.search(
            rf"^(?:async )?def {name}\b", path.read_text(), re.M
        ):
            missing.append(f"{file}::{name}")
    assert missing == []


def test_every_promise_names_a_test() -> None:
    # Each bullet and each table row of the page holds at least one test reference.
    items = re.split(r"\n(?=\* |\| )", DOC.split("\n## ", 1)[1])
    promises = [i for i in items if i.startswith(("* ", "| ")) and not i.startswith("| ---")]
    bare = [p.splitlines()[0] for p in promises if not REFERENCE.search(p)]
    assert [b for b in bare if not b.startswith("| errno")] == []
