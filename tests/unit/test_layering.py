"""Layer 1: the package layout holds its shape (in the spirit of trio's test_exports.py).

Imports flow one way: the CLI and the daemon's composition root build everything; the
lifecycle (``musicfs.service``) may use every component; the components (origins, cache,
catalog, the FUSE operations, search, sync) never reach back into the config parser or
the lifecycle; and no two modules of ``musicfs`` import each other, directly or round a
longer loop -- not even inside a function, where a cycle hides until the day it bites at
import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import musicfs

PACKAGE = Path(musicfs.__file__).parent
COMPONENTS = (
    "musicfs.cache",
    "musicfs.origins",
    "musicfs.catalog",
    "musicfs.fuse.operations",
    "musicfs.fuse.search_folder",
    "musicfs.fuse.settings",
    "musicfs.search",
    "musicfs.library.sync",
    "musicfs.library.settings",
)
UPPER = ("musicfs.config", "musicfs.service", "musicfs.daemon", "musicfs.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every musicfs module ``name`` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # ``from musicfs.service import control`` imports the module control.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target != "musicfs":
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


GRAPH = _graph()


def test_the_graph_sees_the_package() -> None:
    # A parser that found nothing would pass every test below.
    assert "musicfs.service.supervisor" in GRAPH["musicfs.daemon"]
    assert "musicfs.origins.settings" in GRAPH["musicfs.origins.sftp"]
    assert len(GRAPH) > 40


@pytest.mark.parametrize("component", COMPONENTS)
def test_components_never_import_the_config_parser_or_the_lifecycle(component: str) -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if _within(name, component)
        for target in targets
        if any(_within(target, upper) for upper in UPPER)
    )
    assert wrong == []


def test_no_import_cycle_in_musicfs() -> None:
    # Tarjan's strongly connected components: any with more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(GRAPH[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    assert cycles == []


def test_the_cycle_check_finds_a_cycle() -> None:
    # The same walk over a graph with a known loop, so the test above can fail.
    global GRAPH
    saved = GRAPH
    GRAPH = {**saved, "musicfs.config": saved["musicfs.config"] | {"musicfs.cli"}}
    try:
        with pytest.raises(AssertionError):
            test_no_import_cycle_in_musicfs()
    finally:
        GRAPH = saved


# Where no class may grow past what one reader takes in at a sitting (issue 12); the rest
# of the package joins this list as its large classes are split.
SMALL_CLASSES = (
    "musicfs.cache",
    "musicfs.catalog",
    "musicfs.config",
    "musicfs.daemon",
    "musicfs.fuse",
    "musicfs.library",
    "musicfs.pins",
    "musicfs.search",
    "musicfs.service",
)
MAX_CLASS_LINES = 300


def _class_lines() -> dict[str, int]:
    """Lines of every class in the package, by ``module.Class``."""
    found = {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None
                found[f"{name}.{node.name}"] = node.end_lineno - node.lineno + 1
    return found


def test_no_class_in_the_split_modules_is_over_300_lines() -> None:
    sizes = _class_lines()
    # A measure that found nothing, or counted nothing, would pass the check below.
    assert sizes["musicfs.catalog.db.Catalog"] > 100
    large = sorted(
        f"{name}: {lines} lines"
        for name, lines in sizes.items()
        if lines > MAX_CLASS_LINES
        and any(_within(name.rpartition(".")[0], prefix) for prefix in SMALL_CLASSES)
    )
    assert large == []
