"""The package's shape: imports point one way (utilities at the bottom, applications at the top), modules stay small."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "monai_shpeft"

#: bottom to top; a unit (a top-level module or subpackage) may import from its own layer and the layers below
LAYERS: tuple[tuple[str, ...], ...] = (
    ("utils", "errors", "failure_report", "amp", "distributed", "run_lock", "metrics"),
    ("transforms", "data", "backbones", "feature_cache"),
    ("importance", "sparse_set", "methods", "networks", "linear_probe", "delta", "memory", "plots", "clinical"),
    ("handlers",),
    ("benchmark", "zoo", "analysis", "settings"),
)
MAX_MODULE_LINES = 450


def layer_of(unit: str) -> int:
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    raise AssertionError(f"monai_shpeft.{unit} has no layer: add it to LAYERS in {Path(__file__).name}")


def unit_of(module: str) -> str | None:
    """``monai_shpeft.data.busi`` -> ``data``; ``None`` for modules outside the package or its ``__init__``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "monai_shpeft" and len(parts) > 1 else None


def imported_modules(path: Path) -> Iterator[tuple[str, int]]:
    """Every module ``path`` imports (function-level imports too: a lazy import is still a dependency)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else [])), node.lineno
            else:
                yield node.module or "", node.lineno


def dependencies() -> dict[tuple[str, str], list[str]]:
    """``(importer unit, imported unit) -> ["file:line", ...]`` across units."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = unit_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        for imported, line in imported_modules(path):
            target = unit_of(imported)
            if importer and target and importer != target and not target.startswith("__"):
                edges.setdefault((importer, target), []).append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    return edges


def find_cycle(edges: dict[tuple[str, str], list[str]]) -> list[str] | None:
    graph: dict[str, set[str]] = {}
    for source, target in edges:
        graph.setdefault(source, set()).add(target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [node, nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return None


def test_every_unit_of_the_package_has_a_layer() -> None:
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    units -= {"__init__", "__main__", "__pycache__"}
    for unit in sorted(units):
        if (PACKAGE / unit).is_dir() and not (PACKAGE / unit / "__init__.py").exists():
            continue  # data folders such as zoo/templates live inside a unit, not beside it
        layer_of(unit)


def test_no_module_imports_from_a_layer_above_it() -> None:
    upward = [
        f"{importer} (layer {layer_of(importer)}) imports {target} (layer {layer_of(target)}) at {', '.join(places)}"
        for (importer, target), places in sorted(dependencies().items())
        if layer_of(target) > layer_of(importer)
    ]
    assert not upward, "imports must point down the layers:\n" + "\n".join(upward)


def test_no_import_cycle_between_units() -> None:
    edges = dependencies()
    cycle = find_cycle(edges)
    assert cycle is None, (
        "import cycle: "
        + " -> ".join(cycle or [])
        + "".join(f"\n  {a} -> {b}: {', '.join(edges.get((a, b), []))}" for a, b in zip(cycle or [], (cycle or [])[1:]))
    )


def test_the_checks_catch_an_upward_import_and_a_cycle() -> None:
    """The helpers above would report the faults they exist for."""
    assert layer_of("utils") < layer_of("handlers")
    assert find_cycle({("data", "transforms"): [], ("transforms", "data"): []}) in (
        ["data", "transforms", "data"],
        ["transforms", "data", "transforms"],
    )
    assert find_cycle({("data", "transforms"): [], ("transforms", "utils"): []}) is None
    with pytest.raises(AssertionError, match="has no layer"):
        layer_of("a_new_module")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_over_the_line_budget(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines: split it by concern"
