"""The package's shape, checked: fedsim's modules import each other without cycles,
and the reading side (the results schema and writer, the analysis) imports nothing
that trains.

The graph is read from the source with :mod:`ast` (every ``import`` and ``from ...
import`` statement, those inside functions too), so a lazy import counts like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fedsim"
READING_SIDE = ("fedsim.analysis", "fedsim.results")
TRAINING_SIDE = (
    "fedsim.simulation",
    "fedsim.engine",
    "fedsim.client",
    "fedsim.data",
    "fedsim.strategies",
    "fedsim.models",
    "fedsim.participation",
    "fedsim.system",
    "fedsim.config",
    "torch",
    "flwr",
    "ray",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The modules ``path`` imports: fedsim's own by full name, others by top-level name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: fedsim imports by absolute names"
            base = node.module or ""
            # "from fedsim import keys" imports the module fedsim.keys
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for name in names:
            found.add(name if name.startswith("fedsim") else name.split(".")[0])
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def test_fedsim_modules_import_each_other_without_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if target not in edges or target == module:
                continue
            # a package's __init__ re-exporting its own modules is not a cycle
            if module.startswith(target + ".") or target.startswith(module + "."):
                continue
            if state.get(target) == 1:
                cycles.append([*path, module, target])
            elif target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("side", READING_SIDE)
def test_the_reading_side_imports_nothing_that_trains(side: str) -> None:
    edges = graph()
    reached: dict[str, str] = {}  # module → the module that imported it
    todo = [m for m in edges if m == side or m.startswith(side + ".")]
    seen = set(todo)
    while todo:
        module = todo.pop()
        for target in edges.get(module, ()):
            if target not in seen:
                seen.add(target)
                reached[target] = module
                if target in edges:
                    todo.append(target)
    bad = sorted(
        f"{reached[m]} imports {m}"
        for m in seen
        if any(m == t or m.startswith(t + ".") for t in TRAINING_SIDE)
    )
    assert not bad, "\n".join(bad)


def test_the_graph_sees_every_kind_of_import() -> None:
    edges = graph()
    assert "fedsim.simulation.launch" in edges["fedsim.simulation.entry"]  # a module-level import
    assert "fedsim.simulation.entry" in edges["fedsim.simulation"]  # a package's re-export
    assert "fedsim.engine.ray_grid" in edges["fedsim.simulation.launch"]  # inside a function
    assert "fedsim.keys" in edges["fedsim.simulation.launch"]  # "from fedsim import keys"
    assert "ray" in edges["fedsim.engine.ray_runtime"]  # a third-party package
