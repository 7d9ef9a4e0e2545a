"""Every libsodium call of the vault goes through one safe layer: ``vault/crypto.py``.

``secretvault.backends._sodium`` is the thin binding layer (functions named
after the C calls, taking raw pointers); PyNaCl and cffi reach libsodium,
or raw memory, too.  Only the safe layer may import any of them: every
other vault module calls its functions, which take slot handles, so a
secret never becomes ``bytes`` outside it.  Each module of the vault is
parsed with ``ast``, and every import it makes -- at module level, inside
functions, under ``TYPE_CHECKING`` -- is checked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

VAULT = Path(__file__).resolve().parents[3] / "vault"
#: the one vault module allowed below the safe layer
SAFE_LAYER = "secretvault.vault.crypto"
#: what only the safe layer may import (a name, or anything under it)
BINDINGS = ("secretvault.backends._sodium", "nacl", "cffi")


def _module_name(path: Path) -> str:
    parts = path.relative_to(VAULT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("secretvault", *parts))


def _imports(tree: ast.AST) -> Iterator[str]:
    """Every module name an import in ``tree`` may bind (``from a import b``
    yields both ``a`` and ``a.b``: ``b`` may be a module)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _reaches_bindings(tree: ast.AST) -> list[str]:
    return sorted({
        name for name in _imports(tree)
        if any(name == b or name.startswith(b + ".") for b in BINDINGS)
    })


def test_only_the_safe_layer_imports_the_bindings() -> None:
    modules = {_module_name(p): p for p in sorted(VAULT.rglob("*.py"))}
    assert SAFE_LAYER in modules and len(modules) > 10  # the walk found the vault
    wrong = {}
    for name, path in modules.items():
        if name == SAFE_LAYER:
            continue
        found = _reaches_bindings(ast.parse(path.read_text(), str(path)))
        if found:
            wrong[name] = found
    assert wrong == {}, f"call {SAFE_LAYER} instead: {wrong}"


def test_the_safe_layer_is_the_one_that_imports_them() -> None:
    """The rule above is not vacuous: the safe layer itself is caught by it."""
    path = VAULT / "crypto.py"
    assert _reaches_bindings(ast.parse(path.read_text())) == ["secretvault.backends._sodium"]


def test_the_check_sees_every_form_of_import() -> None:
    forms = [
        "from secretvault.backends import _sodium as na",
        "import secretvault.backends._sodium",
        "from secretvault.backends._sodium import ffi",
        "def f():\n    from secretvault.backends import _sodium",
        "from nacl.bindings import crypto_sign",
        "import cffi",
    ]
    for source in forms:
        assert _reaches_bindings(ast.parse(source)), source
    assert _reaches_bindings(ast.parse("from secretvault.backends import Slot")) == []
