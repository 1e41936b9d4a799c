"""The package's layering, checked on the source: no import cycle, no import upwards, no private name across modules.

Every form of import counts: ``import convlens.x``, ``from . import x``,
``from .x import y``, imports inside functions and under ``TYPE_CHECKING``.
A module that imports a package's submodule depends on that submodule (and
Python runs the package's ``__init__`` first, which is not an edge of ours).

Layers, bottom up: core <- render <- images/adapters/output <- model <- passes
<- views (maps, stats, heatmaps, methods, visualize, dataset) <- report/timeline
<- lens <- cli. A module imports at module level only from its own layer or below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import convlens

ROOT = Path(convlens.__file__).resolve().parent

#: Top-level modules and packages by layer; a module may import from its layer and those below.
LAYERS = [
    {"_errors", "_progress", "_stderr", "_version", "core"},
    {"render"},
    {"images", "selection", "classes", "output", "adapters"},
    {"model"},
    {"passes"},
    {"maps", "stats", "methods", "heatmaps", "visualize", "dataset", "evaluate", "compare"},
    {"report", "timeline"},
    {"lens"},
    {"cli", "__main__", "__init__", "keras", "torch"},
]

#: Private modules that any convlens module may import (the package's own plumbing).
SHARED_PRIVATE = {"_errors", "_progress", "_stderr", "_version", "__init__"}


def _layer(top: str) -> int:
    found = [i for i, names in enumerate(LAYERS) if top in names]
    assert found, f"convlens.{top} is in no layer of tests/test_layering.py: add it where it belongs"
    return found[0]


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name (``convlens.adapters.torch``) -> (file, is a package ``__init__``)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        out[".".join(("convlens", *(parts[:-1] if is_pkg else parts)))] = (path, is_pkg)
    return out


MODULES = _modules()


def _imported(module: str, is_pkg: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The convlens modules an import statement names (a submodule where it names one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "convlens"]
    if node.level == 0:
        base = node.module or ""
        if base.split(".")[0] != "convlens":
            return []
    else:
        package = module.split(".") if is_pkg else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join(package + ([node.module] if node.module else []))
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in MODULES else base)
    return out


def _known(name: str) -> str | None:
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else None


def import_graph() -> dict[str, set[str]]:
    """Every convlens module -> the convlens modules it imports, by any statement anywhere in it."""
    graph: dict[str, set[str]] = {}
    for module, (path, is_pkg) in MODULES.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(module, is_pkg, node):
                    known = _known(target)
                    if known and known != module:
                        edges.add(known)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert found == [], "\n".join(f"{len(c)} modules in a cycle: {', '.join(c)}" for c in found)


def test_the_cycle_finder_sees_every_form_of_import(tmp_path):
    """A cycle made only of function-level ``from . import x`` and ``import convlens.x`` is found."""
    graph = {"convlens.a": {"convlens.b"}, "convlens.b": {"convlens.c"}, "convlens.c": {"convlens.a"},
             "convlens.d": {"convlens.a"}}
    assert cycles(graph) == [["convlens.a", "convlens.b", "convlens.c"]]
    tree = ast.parse("def f():\n    from . import base\n    import convlens.model\n    from .. import lens\n")
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    got = [t for n in nodes for t in _imported("convlens.methods.gradcam", False, n)]
    assert got == ["convlens.methods.base", "convlens.model", "convlens.lens"]


def _top_level_imports(tree: ast.Module):
    """Imports executed at import time (module body, if/try blocks, not TYPE_CHECKING)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])


def test_no_module_imports_from_a_layer_above_it():
    wrong = []
    for module, (path, is_pkg) in MODULES.items():
        parts = module.split(".")[1:] or ["__init__"]
        mine = _layer(parts[0])
        for node in _top_level_imports(ast.parse(path.read_text())):
            for target in _imported(module, is_pkg, node):
                tparts = target.split(".")[1:]
                if not tparts or tparts[0] == parts[0]:
                    continue
                if _layer(tparts[0]) > mine:
                    wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_no_private_name_crosses_a_module():
    """``from x import _name`` never crosses a module; a ``_private`` module is imported only inside its package."""
    wrong = []
    for module, (path, is_pkg) in MODULES.items():
        package = module if is_pkg else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(module, is_pkg, node):
                known = _known(target) or target
                private_mod = next((p for p in known.split(".")[1:] if p.startswith("_") and p not in SHARED_PRIVATE),
                                   None)
                if private_mod is not None:
                    owner = known[: known.index("." + private_mod)]
                    if not (package == owner or package.startswith(owner + ".")):
                        wrong.append(f"{module} imports the private module {known}")
            if isinstance(node, ast.ImportFrom) and _imported(module, is_pkg, node):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__") and \
                            f"{_known(_imported(module, is_pkg, node)[0])}.{alias.name}" not in MODULES:
                        wrong.append(f"{module}: imports the private name {alias.name}")
    assert wrong == []
