"""The VM scenario scripts (tests/vm/scenarios), as nixos/tests and tests/vm join them: the
prelude, then one scenario; every name they use is defined, and each defines the function
of its own name that both callers invoke (that both do: tests/vm/test_scenarios.py)."""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "tests" / "vm" / "scenarios"
NAMES = sorted(p.stem for p in SCENARIOS.glob("*.py") if p.stem != "prelude")


def undefined_names(tree: ast.Module) -> set[str]:
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            defined.add(node.name)
            defined.update(a.arg for a in node.args.args + node.args.kwonlyargs)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.alias):
            defined.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.comprehension | ast.For):
            defined.update(n.id for n in ast.walk(node.target) if isinstance(n, ast.Name))
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return used - defined


@pytest.mark.parametrize("name", NAMES)
def test_prelude_and_scenario_define_every_name(name: str) -> None:
    source = (SCENARIOS / "prelude.py").read_text() + (SCENARIOS / f"{name}.py").read_text()
    tree = ast.parse(source)
    assert not undefined_names(tree), f"{name}: undefined {sorted(undefined_names(tree))}"
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert name in functions, f"{name}.py defines no {name}()"


def test_an_undefined_name_is_caught() -> None:
    tree = ast.parse("def f(machine):\n    return sums(machine, MNT)\n")
    assert undefined_names(tree) == {"sums", "MNT"}
