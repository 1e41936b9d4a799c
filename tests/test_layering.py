"""The package's layering, checked on the source: no cycle upwards, no private name across modules.

core <- render <- images/adapters <- passes <- lens <- report <- cli: a module
imports at module level only from its own layer or below (imports inside a
function, such as ``Lens.report`` delegating to the report, are calls, not
layering), and never a ``_private`` name of another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import convlens

ROOT = Path(convlens.__file__).resolve().parent

#: Top-level modules and packages by layer; a module may import from its layer and those below.
LAYERS = [
    {"_errors", "_progress", "_stderr", "core"},
    {"render"},
    {"images", "selection", "classes", "output", "adapters"},
    {"passes"},
    {"lens", "stats", "methods", "heatmaps", "visualize", "dataset"},
    {"report", "timeline"},
    {"cli", "__main__", "__init__", "keras", "torch"},
]


def _layer(top: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        yield path, rel.parts


def _target(parts: tuple[str, ...], node: ast.ImportFrom) -> tuple[str, ...] | None:
    """The imported module's parts inside convlens, or None for another package."""
    if node.level == 0:
        mod = (node.module or "").split(".")
        return tuple(mod[1:]) if mod[0] == "convlens" else None
    package = list(parts[:-1]) if parts[-1] != "__init__" else list(parts[:-1])
    base = package[: len(package) - (node.level - 1)]
    return tuple(base + (node.module.split(".") if node.module else []))


def _top_level_imports(tree: ast.Module):
    """Import-froms executed at import time (module body, if/try blocks, not TYPE_CHECKING)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                stack.extend(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])


def test_no_module_imports_from_a_layer_above_it():
    wrong = []
    for path, parts in _modules():
        mine = _layer(parts[0])
        for node in _top_level_imports(ast.parse(path.read_text())):
            target = _target(parts, node)
            if not target or target[0] == parts[0]:
                continue
            if _layer(target[0]) > mine:
                wrong.append(f"{'/'.join(parts)} imports convlens.{'.'.join(target)}")
    assert wrong == []


def test_no_private_name_crosses_a_module():
    wrong = []
    for path, parts in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom) or _target(parts, node) is None:
                continue
            target = _target(parts, node)
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                module_private = target and target[-1].startswith("_") and target[-1] not in (
                    "_errors", "_progress", "_stderr", "__init__")
                # a private module is its package's own: its modules and subpackages may import it
                if module_private and tuple(parts[:len(target) - 1]) == tuple(target[:-1]) \
                        and len(parts) >= len(target):
                    module_private = False
                if private or module_private:
                    wrong.append(f"{'/'.join(parts)}: from {'.'.join(target)} import {alias.name}")
    assert wrong == []
