"""The package keeps to the public API of Django and django-auth-ldap, so that it works with
every supported version (tox.ini): no attribute of theirs that is private, or internal to
the database backends, is used."""

from __future__ import annotations

import ast
from pathlib import Path

import adldap_auth

#: Private or backend-internal names that changed between Django (or django-auth-ldap)
#: versions, each with its public replacement.
FORBIDDEN = {
    "insert_statement": "QuerySet.bulk_create(ignore_conflicts=True)",
    "on_conflict_suffix_sql": "QuerySet.bulk_create(ignore_conflicts=True)",
    "_registry": "AdminSite.is_registered() / get_model_admin()",
    "_begin": "LDAPSearch.execute()",
    "_results": "LDAPSearch.execute()",
    "_process_results": "LDAPSearch.execute()",
}


def _uses() -> list[str]:
    found = []
    for path in sorted(Path(adldap_auth.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.FunctionDef):
                name = node.name  # an override of a private method counts as a use
            if name in FORBIDDEN:
                found.append(f"{path.name}:{node.lineno}: {name} (use {FORBIDDEN[name]})")
    return found


def test_no_private_framework_api_is_used():
    assert _uses() == []
