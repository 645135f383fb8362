"""The package's import graph: no circle between its parts and no stage package importing a later stage's.

Every `import` counts, those inside functions too (a lazy import is still a dependency, only paid later).
A part is a top-level module or subpackage of `ragworks`; a stage package's place is where its first stage
runs (`ragworks.stage.run_order`). What still breaks a rule is listed in KNOWN with the reason: the list can
only shrink (a pair that no longer breaks it fails the test too, so the list stays true).
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

from ragworks.stage import registry, run_order

SOURCE = Path(__file__).resolve().parents[1] / "platform" / "ragworks"
# (importer, imported) pairs that still break a rule, each with its reason: none left
KNOWN: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def edges() -> set[tuple[str, str]]:
    modules = {module_name(p): p for p in SOURCE.rglob("*.py")}
    found = set()
    for name, path in modules.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module or ""
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {(part(name), part(t)) for t in targets if t in modules and part(t) != part(name)}
    return found


def test_no_import_circle_and_no_upward_import():
    graph = edges()
    place: dict[str, int] = {}  # a stage package: the run position of its first stage
    for position, name in enumerate(run_order()):
        place.setdefault(part(registry()[name].run.partition(":")[0]), position)
    upward = {(a, b) for a, b in graph if a in place and b in place and place[b] > place[a]}
    assert not upward - KNOWN, f"an earlier stage's package imports a later one's: {sorted(upward - KNOWN)}"

    remaining = {k: {b for a, b in graph if a == k and (a, b) not in KNOWN} for k in {a for a, _ in graph}}
    try:
        graphlib.TopologicalSorter(remaining).prepare()
    except graphlib.CycleError as err:
        raise AssertionError(f"an import circle: {' -> '.join(err.args[1])}") from None
    gone = KNOWN - graph
    assert not gone, f"no longer imported, take them off KNOWN: {sorted(gone)}"
