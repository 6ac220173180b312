"""Readers of users and groups: the searches a run makes, and nothing else.

They build filters and yield :class:`~adldap_auth.directory.Entry` objects from a
:class:`DirectorySession` (incremental filters are :mod:`adldap_auth.tracking`'s). They never
write anything and hold no state between calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ldap.filter import escape_filter_chars

from . import Entry
from .connection import DirectorySession


@dataclass(frozen=True)
class Scope:
    """Where entries of one kind live: a search base and a filter."""

    base: str
    filterstr: str


def and_filter(*parts: str) -> str:
    """Join filters with ``&``; each part must already be a parenthesised filter."""
    parts = tuple(p for p in parts if p)
    return parts[0] if len(parts) == 1 else "(&" + "".join(parts) + ")"


def read_entries(
    session: DirectorySession,
    scope: Scope,
    attributes: Iterable[str],
    ranged: Iterable[str] = (),
) -> Iterator[Entry]:
    """Every entry of ``scope`` with the given attributes (paged; ranged values completed)."""
    return session.search(scope.base, scope.filterstr, list(attributes), ranged=ranged)


def member_filter(template: str, dn: str) -> str:
    """The seed's per-user membership filter with ``{distinguishedName}`` safely escaped."""
    return template.replace("{distinguishedName}", escape_filter_chars(dn))
