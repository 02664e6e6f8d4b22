"""The layer's package shows the architecture: the shared domain at its top, one sub-package per capability beside
the AWS adapters, imports only downwards, every module used by a function, none too long to read.

Read from the source (the AST), not by importing it."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "layers" / "prefetch" / "eks_prefetch"
FUNCTIONS = ROOT / "functions"
MAX_TOP_MODULES = 8
MAX_LINES = 400
# What each part of the package may import from the package: the shared domain at the top, then the AWS adapters,
# then the capabilities in the order they build on each other. Nothing imports a part above it.
TOP = "(top)"
MAY_IMPORT = {
    TOP: {TOP},
    "aws": {TOP, "aws"},
    "prefetch": {TOP, "aws", "prefetch"},
    "status": {TOP, "aws", "prefetch", "status"},
    "warm": {TOP, "aws", "prefetch", "status", "warm"},
    "deploy": {TOP, "aws", "deploy"},
}


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def part_of(module: str) -> str:
    """The package's part a module belongs to: a sub-package's name, or TOP."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in MAY_IMPORT) else TOP


def imports_of(path: Path, name: str | None = None) -> set[str]:
    """The package's modules that a file imports (``from eks_prefetch.x import y`` counts eks_prefetch.x.y when that
    is a module, else eks_prefetch.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("eks_prefetch")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eks_prefetch"):
            found.add(node.module)
            found |= {
                f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules()
            }
    return {module for module in found if module in modules() and module != name}


def test_the_top_holds_only_the_shared_domain():
    top = [path.stem for path in PACKAGE.glob("*.py") if path.stem != "__init__"]
    assert len(top) <= MAX_TOP_MODULES, sorted(top)
    assert {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"} == set(
        MAY_IMPORT
    ) - {TOP}


@pytest.mark.parametrize("tree", [PACKAGE, ROOT / "prefetchctl"], ids=["layer", "prefetchctl"])
def test_no_module_is_over_400_lines(tree: Path):
    long = {
        str(path.relative_to(ROOT)): n
        for path in tree.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_no_import_climbs_back_up():
    climbing = [
        f"{name} imports {imported}"
        for name, path in modules().items()
        for imported in imports_of(path, name)
        if part_of(imported) not in MAY_IMPORT[part_of(name)]
    ]
    assert climbing == []


def test_every_module_in_the_layer_is_imported_by_some_function():
    """What no function imports does not belong in the layer every function ships with (the operator's tools live
    in prefetchctl)."""
    reached: set[str] = set()
    pending = [module for handler in FUNCTIONS.glob("*/app.py") for module in imports_of(handler)]
    while pending:
        module = pending.pop()
        if module in reached:
            continue
        reached.add(module)
        # Importing a module imports its packages' __init__ too.
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        pending += [parent for parent in parents if parent in modules()]
        pending += list(imports_of(modules()[module], module))
    assert set(modules()) - reached == set()
