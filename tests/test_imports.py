"""The package's import structure, read with `ast` (every import, those inside functions too).

The stage entry points (`alien_hotels.stages.*`) choose the executor: the step modules
(captioning, editing) offer the per-batch / per-image work and the local loop, the Ray drivers in
`alien_hotels.distributed` import them, and nothing below a stage imports the Ray side. A cycle
between modules, or between packages (`editing` <-> `methods`), is a layering mistake that lazy
imports only hide. Stage hand-offs (the manifest format, shared names) come from
`alien_hotels.tables`, so the download code (`images.fetch`) is the images stage's alone.
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
        # `alien_hotels.distributed.config` holds only `RayConfig`, the `ray.*` params section
        # (no Ray import): the params schema validates it with every other section.
        return importer == "alien_hotels.config" and imported == "alien_hotels.distributed.config"

    wrong = sorted(
        f"{importer} imports {imported}"
        for importer, targets in GRAPH.items()
        for imported in targets
        if imported.startswith("alien_hotels.distributed") and not allowed(importer, imported)
    )
    assert not wrong, wrong


def test_editing_never_imports_the_trained_methods():
    """`methods` (textual inversion, imagic) builds on `editing`; the arrow never turns back."""
    wrong = sorted(
        f"{importer} imports {imported}"
        for importer, targets in GRAPH.items()
        if importer == "alien_hotels.editing" or importer.startswith("alien_hotels.editing.")
        for imported in targets
        if imported == "alien_hotels.methods" or imported.startswith("alien_hotels.methods.")
    )
    assert not wrong, wrong
    assert "alien_hotels.editing.runner" in GRAPH["alien_hotels.methods.imagic"]  # sees them


def test_only_the_images_stage_imports_the_downloader():
    """Readers of the manifest take its format from `tables`: the download code stays out of
    their import closure, so changing it makes only the `images` stage stale."""

    def images_stage(module: str) -> bool:
        return module.startswith("alien_hotels.images.") or module == "alien_hotels.stages.images"

    importers = {m for m, targets in GRAPH.items() if "alien_hotels.images.fetch" in targets}
    assert importers, "the graph should see images.collect import images.fetch"
    assert all(images_stage(m) for m in importers), sorted(importers)
    # The package itself imports nothing, so `images.config` (params validation) runs no fetch code.
    assert not GRAPH["alien_hotels.images"], GRAPH["alien_hotels.images"]


def package_of(module: str) -> str:
    """`alien_hotels.editing.runner` -> `alien_hotels.editing`; a top-level module is its own."""
    return ".".join(module.split(".")[:2])


def test_no_cycles_between_packages():
    """Collapsed to packages (captioning, editing, methods, images, datasets, stages, ...) and
    top-level modules, the graph has no cycle either: one direction between any two of them."""
    packages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        own = package_of(module)
        packages.setdefault(own, set()).update(
            package_of(t) for t in targets if package_of(t) != own
        )
    assert not strongly_connected(packages)


def test_no_import_cycles():
    """Tarjan's strongly connected components: any with more than one module is a cycle."""
    assert not strongly_connected(GRAPH)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (each a cycle), Tarjan's way."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles
