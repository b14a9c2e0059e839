"""Declared dependencies equal imported ones: every third-party module the package imports (at the top
of a module or inside a function) comes from a distribution pyproject.toml declares, and every declared
distribution is imported somewhere."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions

from conftest import ROOT

# Imported only where the older typer needs it (typer >= 0.22 vendors click as typer._click).
OPTIONAL_FALLBACKS = {"click"}
# Declared for what they bring rather than imported by name (none today).
NOT_IMPORTED: dict[str, str] = {}


def _imported_top_level() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "adapter_cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("adapter_cli", "__future__")}


def _declared() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    return {re.split(r"[<>=!~\[; ]", s, maxsplit=1)[0].lower().replace("_", "-"): s for s in specs}


def test_every_imported_module_is_declared() -> None:
    dists = packages_distributions()
    declared = _declared()
    missing = {}
    for module in _imported_top_level() - OPTIONAL_FALLBACKS:
        owners = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not owners & set(declared):
            missing[module] = sorted(owners)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_declared_dependency_is_imported_and_bounded() -> None:
    dists = packages_distributions()
    imported = {d.lower().replace("_", "-") for m in _imported_top_level() for d in dists.get(m, [m])}
    unused = set(_declared()) - imported - {"pytest"} - set(NOT_IMPORTED)
    assert not unused, f"declared but never imported: {sorted(unused)}"
    unbounded = [spec for spec in _declared().values() if "<" not in spec]
    assert not unbounded, f"give these an upper bound (the range tested here): {unbounded}"
