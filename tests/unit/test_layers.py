"""The rooms and their layers, read from the source (docs/architecture.md).

Every module under the import root is parsed with ``ast`` and every import
it makes — at module level, inside functions, under ``TYPE_CHECKING`` — is an
edge of the import graph.  The tests hold the architecture to what the
document draws:

* nothing imports a bare ``api``, ``backends``, ``clients``, ``embedded`` or ``vault``;
* each room imports only the rooms below it;
* the graph has no cycle;
* no handwritten module grows past the size that usually means two concerns.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT = "secretvault"
ROOMS = ("api", "backends", "clients", "embedded", "vault")

#: what each layer may import (a layer is a room, or the CLI on top of the vault)
ALLOWED: dict[str, frozenset[str]] = {
    "api": frozenset({"api"}),
    "backends": frozenset({"api", "backends"}),
    "clients": frozenset({"api", "clients"}),
    "vault": frozenset({"api", "backends", "vault"}),
    # the keyring as a library: the vault's parts, the client's records
    "embedded": frozenset({"api", "backends", "clients", "vault", "embedded"}),
    "cli": frozenset({"api", "backends", "clients", "vault", "cli"}),
}

#: generated code (scripts/gen-proto, scripts/gen-sync-client) is not handwritten
GENERATED_MARK = "do not edit"
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    """Every module of the import root: dotted name -> file."""
    found: dict[str, Path] = {f"{ROOT}": REPO / ROOT / "__init__.py"}
    for room in ROOMS:
        for path in sorted((REPO / room).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((ROOT, *parts))] = path
    main = REPO / ROOT / "__main__.py"
    if main.exists():
        found[f"{ROOT}.__main__"] = main
    return found


MODULES = _modules()


def _imports(path: Path) -> Iterator[str]:
    """Every absolute module name ``path`` imports (``from a import b`` yields
    ``a.b`` when that is a module, else ``a``)."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                yield sub if sub in MODULES else node.module


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__main__":
        return "cli"  # the root package and python -m secretvault: the top
    if parts[1] == "vault" and len(parts) > 2 and parts[2] == "cli":
        return "cli"
    return parts[1]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph[name] = {m for m in _imports(path) if m in MODULES and m != name}
    return graph


def _python_files() -> Iterator[Path]:
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0] in {".venv", "venv", "build", ROOT} or ".git" in rel.parts:
            continue
        yield path


def test_no_module_imports_a_bare_room() -> None:
    """A bare ``import backends`` would load a second copy of a room from a
    checkout's working directory: two error trees, two allocators."""
    bad = []
    for path in _python_files():
        for module in _imports(path):
            if module.split(".")[0] in ROOMS:
                bad.append(f"{path.relative_to(REPO)}: {module}")
    assert bad == [], "import these as secretvault.<room>:\n" + "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every cycle a depth-first walk of ``graph`` closes, as ``a -> b -> a``."""
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import that a module's layer may not make."""
    return [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if target != ROOT and _layer(target) not in ALLOWED[_layer(module)]
    ]


def test_imports_point_down_the_layers() -> None:
    wrong = _upward(_graph())
    assert wrong == [], "\n".join(wrong)


def test_the_import_graph_has_no_cycle() -> None:
    cycles = _cycles(_graph())
    assert cycles == [], "\n".join(cycles)


def test_the_checker_finds_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The checks above can fail: the same functions over a planted graph."""
    planted = {
        "secretvault.backends._a": {"secretvault.vault.keyring"},  # upward
        "secretvault.vault.keyring": {"secretvault.backends._a"},  # and back: a cycle
    }
    assert _upward(planted) == [
        "secretvault.backends._a (backends) imports secretvault.vault.keyring (vault)"
    ]
    assert _cycles(planted) == [
        "secretvault.backends._a -> secretvault.vault.keyring -> secretvault.backends._a"
    ]
    source = tmp_path / "m.py"
    source.write_text("import backends\nfrom secretvault.api import errors\n")
    assert [m for m in _imports(source) if m.split(".")[0] in ROOMS] == ["backends"]


HANDWRITTEN = sorted(
    name for name, path in MODULES.items() if GENERATED_MARK not in path.read_text()[:400]
)


def test_generated_code_is_recognised() -> None:
    generated = set(MODULES) - set(HANDWRITTEN)
    assert "secretvault.api._proto.secretvault.v1.keys_pb2" in generated
    assert "secretvault.vault.keyring" in HANDWRITTEN


@pytest.mark.parametrize("module", HANDWRITTEN)
def test_handwritten_modules_stay_small(module: str) -> None:
    """A module past ~450 handwritten lines is usually two (style.md, 11)."""
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, (
        f"{module} has {lines} lines: split it by concern (docs/architecture.md)"
    )
