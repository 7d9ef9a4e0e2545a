"""tests/unit/ mirrors the packages: each test sits in the folder of what it tests.

``tests/unit/<room>/.../test_x.py`` tests the package ``secretvault.<room>...``
(``benchmarks`` for ``tests/unit/benchmarks``), so a newcomer finds a module's
tests by its name.  Each folder must name a package that exists, and each test
file must import that package or a module in it; a file that imports only
another room's modules belongs in that room's folder.  (A test that reads a
package's source instead of importing it names its modules in strings:
those count.)  Files directly in
``tests/unit`` check the tree as a whole (the import layers, this layout).
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent
TEST_FILES = sorted(p for p in UNIT.rglob("test_*.py") if p.parent != UNIT)


def package_of(folder: Path) -> str:
    parts = folder.relative_to(UNIT).parts
    return ".".join(parts) if parts[0] == "benchmarks" else ".".join(("secretvault", *parts))


def imported(path: Path) -> set[str]:
    """Every module a file imports (``from M import name`` as ``M`` and
    ``M.name``), and every string naming a module of the project."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith(("secretvault.", "benchmarks.")):
                names.add(node.value)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("folder", sorted({p.parent for p in TEST_FILES}), ids=str)
def test_each_folder_names_a_package(folder: Path) -> None:
    package = package_of(folder)
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations is not None, (
        f"tests/unit/{folder.relative_to(UNIT)} mirrors no package: {package} does not exist"
    )
    assert (folder / "__init__.py").exists(), f"{folder} has no __init__.py"


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: str(p.relative_to(UNIT)))
def test_each_file_tests_its_folders_package(path: Path) -> None:
    package = package_of(path.parent)
    names = imported(path)
    assert any(n == package or n.startswith(package + ".") for n in names), (
        f"{path.relative_to(UNIT)} imports nothing from {package}; move it to the folder "
        f"of the package it tests (it imports: "
        f"{sorted(n for n in names if n.startswith(('secretvault', 'benchmarks')))})"
    )
