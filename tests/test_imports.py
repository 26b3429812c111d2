"""The package's import structure, read with `ast` (every import, those inside functions too).

The stage entry points (`alien_hotels.stages.*`) choose the executor: the step modules
(captioning, editing) offer the per-batch / per-image work and the local loop, the Ray drivers in
`alien_hotels.distributed` import them, and nothing below a stage imports the Ray side. A cycle
between modules is a layering mistake that lazy imports only hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "alien_hotels"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str) -> set[str]:
    """The alien_hotels modules `module` names in any import statement (the most specific one:
    `from a.b import c` is `a.b.c` when that is a module, else `a.b`)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *filter(None, [base])])
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import a.b.c` where c is not a module
                name = name.rpartition(".")[0]
            if name.startswith("alien_hotels") and name != module:
                found.add(name)
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_the_graph_sees_lazy_imports():
    # The stage's Ray executor is imported inside `run`: the check must see such imports.
    assert "alien_hotels.distributed.caption" in GRAPH["alien_hotels.stages.caption"]
    assert "alien_hotels.distributed.edit" in GRAPH["alien_hotels.stages.edit"]
    assert "alien_hotels.captioning.run" in GRAPH["alien_hotels.distributed.caption"]
    assert "alien_hotels.editing.runner" in GRAPH["alien_hotels.distributed.edit"]


def test_only_stage_entry_points_import_the_ray_side():
    def allowed(importer: str, imported: str) -> bool:
        if importer.startswith(("alien_hotels.stages.", "alien_hotels.distributed")):
            return True
        if importer == "alien_hotels.cli":
            return True
        # `alien_hotels.distributed` itself holds only `RayConfig`, the `ray.*` params section
        # (no Ray import): the params schema validates it with every other section.
        return importer == "alien_hotels.config" and imported == "alien_hotels.distributed"

    wrong = sorted(
        f"{importer} imports {imported}"
        for importer, targets in GRAPH.items()
        for imported in targets
        if imported.startswith("alien_hotels.distributed") and not allowed(importer, imported)
    )
    assert not wrong, wrong


def test_no_import_cycles():
    """Tarjan's strongly connected components: any with more than one module is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(GRAPH[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, cycles
