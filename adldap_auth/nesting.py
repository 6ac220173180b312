"""The group graph as the last successful batch run stored it (:class:`~adldap_auth.models.GroupNode`).

Who reads it:

- an **incremental run** compares each changed group's member list with the stored one, to
  recheck exactly the users whose memberships may have moved;
- a **login** reads the user's direct groups live and walks up the stored nesting
  (:func:`stored_graph`), so that it gives the batch's answer without reading every group.

It is written once, at the end of a successful run (:func:`write_nesting`), after the users'
memberships: a run that dies earlier leaves the previous state, which the next incremental run
compares against again. The memberships such a run wrote are not described by that state (nor
by the directory, once it changes again), so a batch run marks the state unsettled before its
first membership write (:func:`mark_unsettled`) and :func:`write_nesting` settles it: a run that
finds it unsettled rechecks every user's memberships. Each rewrite sets a new version, in the database and in Django's cache
(``django.core.cache``), so every process sees a batch run's nesting: at once with a shared
cache (Redis, Memcached, database), after ``LDAP_SYNC_LOGIN_GROUP_CACHE_TIMEOUT`` seconds with a
per-process one.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable

from django.core.cache import cache
from django.db import connections, router, transaction
from django.utils import timezone

from .conf import get_config
from .groups import GroupGraph, StoredNesting
from .mapping import GroupRecord, normalize_dn
from .models import GroupNode, NestingState

__all__ = [
    "VERSION_KEY",
    "mark_unsettled",
    "memberships_unsettled",
    "stored_graph",
    "stored_member_lists",
    "stored_version",
    "write_nesting",
]

VERSION_KEY = "adldap_auth:nesting-version"
_GRAPH_KEY = "adldap_auth:nesting-graph"
_WRITE_BATCH = 1000
#: A version's graph is immutable; a day bounds what stale versions hold in the cache.
_GRAPH_TIMEOUT = 24 * 3600

#: (version, graph): the graph of the version this process last loaded. The version itself
#: is always asked of the shared cache (or the database), so a stale graph is never used.
_loaded: tuple[str, GroupGraph] | None = None


def stored_member_lists(guids: Iterable[str]) -> dict[str, StoredNesting]:
    """DN and member list that the database holds of these groups (those it has)."""
    rows = GroupNode.objects.filter(guid__in=list(guids)).values_list("guid", "dn", "member_keys")
    return {guid: StoredNesting(dn, keys) for guid, dn, keys in rows}


def has_stored_nesting() -> bool:
    return NestingState.objects.exists()


def mark_unsettled() -> None:
    """Say, committed before a batch run's first membership write, that Django's memberships
    may differ from the stored nesting until that run stores its own (:func:`write_nesting`).
    Without a stored nesting there is nothing to mark: the next run is a full one anyway."""
    NestingState.objects.filter(unsettled_since__isnull=True).update(unsettled_since=timezone.now())


def memberships_unsettled() -> bool:
    """Whether a batch run wrote memberships and died before storing its nesting."""
    return NestingState.objects.filter(unsettled_since__isnull=False).exists()


def write_nesting(graph: GroupGraph) -> int:
    """Make the stored groups equal ``graph`` and settle the state (:func:`mark_unsettled`);
    return how many rows were written.

    An unchanged group costs no write: rows are compared field by field (through a
    fingerprint of each stored row, member lists by digest). One transaction, so a login never
    sees half of a new nesting. Streamed: only guids, fingerprints and one batch of rows are
    held at a time (100,000 groups' rows with their member lists would be hundreds of MB).
    """
    stored: dict[str, tuple[int, bytes]] = {
        guid: (pk, _fingerprint(dn, sid, fields, in_scope, digest, parents))
        for guid, pk, dn, sid, fields, in_scope, digest, parents in GroupNode.objects.values_list(
            "guid", "pk", "dn", "object_sid", "fields", "in_scope", "member_digest", "parent_guids"
        ).iterator(chunk_size=_WRITE_BATCH)
    }
    new: list[str] = []
    changed: list[tuple[str, int]] = []  # (guid, pk)
    for record in graph:
        row = stored.pop(record.guid, None)
        if row is None:
            new.append(record.guid)
            continue
        place = graph.nesting_of(record.guid)
        if row[1] != _fingerprint(*_node_values(record, place.digest, place.parent_guids)):
            changed.append((record.guid, row[0]))
    gone = [pk for pk, _fingerprint_ in stored.values()]
    del stored
    if not (new or changed or gone):
        if not has_stored_nesting():
            _set_version()
        elif memberships_unsettled():
            NestingState.objects.update(unsettled_since=None)
        return 0
    with transaction.atomic():
        for start in range(0, len(gone), _WRITE_BATCH):
            GroupNode.objects.filter(pk__in=gone[start : start + _WRITE_BATCH]).delete()
        for start in range(0, len(new), _WRITE_BATCH):
            nodes = [_node(graph, guid) for guid in new[start : start + _WRITE_BATCH]]
            GroupNode.objects.bulk_create(nodes)
        for start in range(0, len(changed), _WRITE_BATCH):
            _update_rows([_node(graph, g, pk) for g, pk in changed[start : start + _WRITE_BATCH]])
        _set_version()
    return len(new) + len(changed) + len(gone)


def _node_values(record: GroupRecord, digest: str, parent_guids: list[str]) -> tuple:
    """The compared fields of a group's row: dn, object_sid, fields, in_scope, member_digest,
    parent_guids."""
    fields = {**record.fields, "name": record.name}
    return record.dn, record.object_sid or "", fields, record.in_scope, digest, parent_guids


def _fingerprint(dn: str, sid: str, fields: dict, in_scope: bool, digest: str, parents) -> bytes:
    """The compared fields of a row, hashed (16 bytes instead of the row)."""
    text = json.dumps([dn, sid, fields, in_scope, digest, list(parents)], sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _node(graph: GroupGraph, guid: str, pk: int | None = None) -> GroupNode:
    record = graph.by_guid(guid)
    place = graph.nesting_of(guid)
    dn, sid, fields, in_scope, digest, parents = _node_values(
        record, place.digest, place.parent_guids
    )
    return GroupNode(
        pk=pk,
        guid=guid,
        dn=dn,
        object_sid=sid,
        fields=fields,
        in_scope=in_scope,
        member_keys=place.member_keys,
        member_digest=digest,
        parent_guids=parents,
    )


def _update_rows(nodes: list[GroupNode]) -> None:
    """Rewrite changed rows with one ``executemany`` (``bulk_update`` builds a CASE WHEN per
    row and field: slow for thousands of rows)."""
    if not nodes:
        return
    connection = connections[router.db_for_write(GroupNode)]
    opts = GroupNode._meta
    names = ["dn", "object_sid", "fields", "in_scope", "member_keys", "member_digest"]
    fields = [opts.get_field(name) for name in [*names, "parent_guids"]]
    quote = connection.ops.quote_name
    assignments = ", ".join(f"{quote(f.column)} = %s" for f in fields)
    sql = f"UPDATE {quote(opts.db_table)} SET {assignments} WHERE {quote(opts.pk.column)} = %s"
    rows = [
        [f.get_db_prep_save(getattr(node, f.attname), connection) for f in fields] + [node.pk]
        for node in nodes
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, rows)


def _set_version() -> None:
    version = uuid.uuid4().hex
    state = NestingState.objects.first()
    if state is None:
        NestingState.objects.create(version=version, written_at=timezone.now())
    else:
        NestingState.objects.filter(pk=state.pk).update(
            version=version, written_at=timezone.now(), unsettled_since=None
        )
    transaction.on_commit(lambda: _publish(version))


def _publish(version: str) -> None:
    timeout = get_config().LOGIN_GROUP_CACHE_TIMEOUT
    if timeout:
        cache.set(VERSION_KEY, version, timeout)


def stored_version() -> str | None:
    """The version of the stored nesting: from the cache, else from the database."""
    timeout = get_config().LOGIN_GROUP_CACHE_TIMEOUT
    version = cache.get(VERSION_KEY) if timeout else None
    if version is None:
        version = NestingState.objects.values_list("version", flat=True).first()
        if version is not None and timeout:
            cache.set(VERSION_KEY, version, timeout)
    return version


def stored_graph() -> GroupGraph | None:
    """The stored nesting as a :class:`GroupGraph` of groups only (no user keys), or None
    when no batch run stored one. Kept in Django's cache under its version."""
    global _loaded
    version = stored_version()
    if version is None:
        return None
    loaded = _loaded
    if loaded is not None and loaded[0] == version:
        return loaded[1]
    key = f"{_GRAPH_KEY}:{version}"
    graph = cache.get(key)
    if graph is None:
        graph = load_stored_graph()
        cache.set(key, graph, _GRAPH_TIMEOUT)
    _loaded = (version, graph)
    return graph


def load_stored_graph() -> GroupGraph:
    """The stored nesting read from the database: each group's parents become the member
    keys of the parents (group DNs only)."""
    rows = list(
        GroupNode.objects.values_list(
            "guid", "dn", "object_sid", "fields", "in_scope", "parent_guids"
        )
    )
    children: dict[str, list[str]] = {}
    for _guid, dn, _sid, _fields, _in_scope, parents in rows:
        for parent in parents:
            children.setdefault(parent, []).append(normalize_dn(dn))
    records = [
        GroupRecord(
            dn=dn,
            guid=guid,
            name=fields.get("name", ""),
            fields=fields,
            member_keys=children.get(guid, []),
            object_sid=sid or None,
            in_scope=in_scope,
        )
        for guid, dn, sid, fields, in_scope, _parents in rows
    ]
    return GroupGraph(records)


def stored_group_records() -> list[GroupRecord]:
    """The groups of the stored nesting as records, with their direct member keys (the graph
    a change-feed run updates)."""
    return [
        GroupRecord(
            dn=dn,
            guid=guid,
            name=fields.get("name", ""),
            fields=fields,
            member_keys=list(member_keys),
            object_sid=sid or None,
            in_scope=in_scope,
        )
        for guid, dn, sid, fields, in_scope, member_keys in GroupNode.objects.values_list(
            "guid", "dn", "object_sid", "fields", "in_scope", "member_keys"
        )
    ]


def forget_loaded() -> None:
    """Drop this process's loaded graph (tests; a settings change)."""
    global _loaded
    _loaded = None
