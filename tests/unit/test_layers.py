"""The package's layers import only downwards (see ``adldap_auth/__init__.py``).

``conf`` -> ``directory`` -> ``mapping`` -> ``groups`` -> ``membership`` -> ``store`` and
``nesting`` -> ``sync`` -> (``management``, ``tasks``); the login path (``login``,
``backends``) uses the layers below ``sync``, never the batch engine.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "adldap_auth"

#: module (first part of its path in the package) -> package modules it must not import.
FORBIDDEN = {
    # The settings know nothing above them (callbacks only imports the named functions).
    "conf": {
        "directory", "mapping", "groups", "membership", "store", "nesting", "sync", "models",
        "login", "backends", "backend_settings", "locking", "checks", "admin", "dbwrite",
        "linking", "resync",
    },  # fmt: skip
    "directory": {"mapping", "groups", "membership", "store", "nesting", "sync", "models"},
    "mapping": {"groups", "membership", "store", "nesting", "sync", "models"},
    "groups": {"membership", "store", "nesting", "sync", "models"},
    "membership": {"store", "nesting", "sync", "models"},
    "store": {"sync", "login", "backends"},
    "nesting": {"sync", "login", "backends"},
    "login": {"sync", "backends"},
    "locking": {"sync", "login", "backends"},
    "backends": {"sync"},
    "backend_settings": {"sync", "store", "nesting"},
    "checks": {"sync"},
}


def imported_modules(path: Path) -> set[str]:
    """The package modules a file imports (relative or absolute), by their first part."""
    found: set[str] = set()
    depth = len(path.relative_to(PACKAGE).parts) - 1
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level > depth + 1:
                    continue
                prefix = path.relative_to(PACKAGE).parts[: depth + 1 - node.level]
                parts = [*prefix, *(node.module or "").split(".")]
                names = [parts[0]] if parts and parts[0] else [a.name for a in node.names]
                found.update(n for n in names if n)
            elif (node.module or "").startswith("adldap_auth."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("adldap_auth."):
                    found.add(alias.name.split(".")[1])
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_upwards(layer: str) -> None:
    target = PACKAGE / layer
    files = sorted(target.rglob("*.py")) if target.is_dir() else [PACKAGE / f"{layer}.py"]
    wrong = {
        str(path.relative_to(PACKAGE)): sorted(imported_modules(path) & FORBIDDEN[layer])
        for path in files
    }
    assert {path: names for path, names in wrong.items() if names} == {}
