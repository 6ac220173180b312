"""The group nesting as the last batch run stored it: what a login needs instead of the graph.

A batch run reads every group with its members and stores, on each
:class:`~adldap_auth.models.DirectoryGroup`, the groups it is a direct member of
(``parent_guids``). A login on a server without ``tokenGroups`` then needs one search for the
user's *direct* groups (live from the directory) and walks up this stored nesting, instead of
reading every group of the scope (one search per page, 1.5 s at 10,000 groups).

The trade: a change of *nesting* (a group put into another group) reaches logins with the
next batch run, as it reaches users who do not log in; a change of a user's own memberships
reaches the login at once. A direct group that no batch run has seen yet (created since) makes
the login read the whole graph instead, as without stored nesting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .conf import sync_settings
from .mapping import GroupRecord
from .models import DirectoryGroup

__all__ = ["StoredGroups", "clear_stored_groups", "stored_groups"]


@dataclass(frozen=True)
class _Group:
    guid: str
    dn: str
    name: str
    object_sid: str
    parents: tuple[str, ...]


class StoredGroups:
    """The linked, present groups whose nesting a batch run stored, indexed for logins."""

    def __init__(self, rows: Iterable[tuple[str, str, str, str, list[str]]]) -> None:
        self._groups: dict[str, _Group] = {}
        self._by_sid: dict[str, str] = {}
        for guid, dn, name, object_sid, parents in rows:
            self._groups[guid] = _Group(guid, dn, name, object_sid, tuple(parents))
            if object_sid:
                self._by_sid[object_sid] = guid

    def __len__(self) -> int:
        return len(self._groups)

    def __contains__(self, guid: object) -> bool:
        return guid in self._groups

    def guid_of_sid(self, sid: str) -> str | None:
        return self._by_sid.get(sid)

    def ancestors(self, guids: Iterable[str]) -> set[str]:
        """These groups and every stored group above them (cycles included)."""
        seen: set[str] = set()
        todo = [g for g in guids if g in self._groups]
        while todo:
            guid = todo.pop()
            if guid in seen:
                continue
            seen.add(guid)
            todo.extend(p for p in self._groups[guid].parents if p in self._groups)
        return seen

    def record(self, guid: str) -> GroupRecord:
        """The group as the database holds it (the store finds nothing to change in it)."""
        group = self._groups[guid]
        return GroupRecord(
            dn=group.dn,
            guid=group.guid,
            name=group.name,
            fields={"name": group.name},
            member_keys=[],
            object_sid=group.object_sid or None,
        )


_cache: dict[str, tuple[float, StoredGroups]] = {}
_lock = threading.Lock()


def _load() -> StoredGroups:
    rows = DirectoryGroup.objects.filter(
        removed_at__isnull=True, parent_guids__isnull=False
    ).values_list("guid", "dn", "group__name", "object_sid", "parent_guids")
    return StoredGroups(rows)


def stored_groups() -> StoredGroups:
    """The stored nesting, kept in the process for ``LDAP_SYNC_LOGIN_GROUP_CACHE_TIMEOUT``
    seconds (one query of every linked group when it is read)."""
    timeout = sync_settings.LOGIN_GROUP_CACHE_TIMEOUT
    if not timeout:
        return _load()
    with _lock:
        cached = _cache.get("groups")
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        groups = _load()
        _cache["groups"] = (time.monotonic() + timeout, groups)
        return groups


def clear_stored_groups() -> None:
    with _lock:
        _cache.clear()
