"""What the database holds for one login, read in one query before writing, so that the
login of an unchanged user writes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connections, router

from ..conf import get_config
from ..mapping import GroupRecord
from ..models import DirectoryGroup


class Known:
    """What the database holds for one login, read before writing (no transaction: reads only).

    ``group_ids``: guid -> Django group id of the user's groups that are linked with the same
    name, fields, DN and SID (the store would not touch them); ``stale``: the other groups,
    written by the store. ``default_ids``: LDAP_SYNC_GROUP_MEMBERSHIP_ADD_DEFAULT's groups,
    None when one is missing (the store creates or reports it). ``member_of``: the groups
    linked to a directory group or default ones that ``user_id`` is a member of, None when not
    read (no known user).
    """

    def __init__(self) -> None:
        self.group_ids: dict[str, int] = {}
        self.stale: list[GroupRecord] = []
        self.default_ids: set[int] | None = set()
        self.member_of: set[int] | None = None
        self.user_id: int | None = None


def read_known(
    groups: Sequence[GroupRecord], default_names: Sequence[str], user_id: int | None
) -> Known:
    """What the database holds for these groups and default groups and, given ``user_id``,
    the user's memberships of them and of every other linked group: one query."""
    known = Known()
    membership = user_id is not None and bool(get_config().GROUP_MEMBERSHIP)
    default_names = list(dict.fromkeys(default_names))
    if not (groups or membership or default_names):
        return known
    fields = sorted({"name", *(name for group in groups for name in group.fields)})
    rows = _known_rows(
        [group.guid for group in groups], default_names, user_id if membership else None, fields
    )
    # (guid, group id, dn, object_sid, removed_at, member, *fields); guid None: a default group
    linked = {row[0]: row for row in rows if row[0] is not None}
    if membership:
        known.member_of = {row[1] for row in rows if row[5]}
        known.user_id = user_id
    # Two records with one name: the store decides which one gets it (and reports).
    unique_names = len({group.name.lower() for group in groups}) == len(groups)
    for group in groups:
        row = linked.get(group.guid)
        if (
            unique_names
            and row is not None
            and row[4] is None
            and row[2] == group.dn
            and row[3] == (group.object_sid or "")
            and dict(zip(fields, row[6:], strict=True)) == {**group.fields, "name": group.name}
        ):
            known.group_ids[group.guid] = row[1]
        else:
            known.stale.append(group)
    if default_names:
        name_at = 6 + fields.index("name")
        found = {row[name_at]: row[1] for row in rows if row[0] is None}
        known.default_ids = set(found.values()) if len(found) == len(default_names) else None
    return known


def _known_rows(
    guids: list[str], default_names: list[str], user_id: int | None, fields: list[str]
) -> list[tuple]:
    """One query: the directory groups with these guids and, when ``user_id`` is given, those
    the user is a member of; then the groups named ``default_names``. Each row: guid (None for
    the default groups), group id, dn, object_sid, removed_at, whether ``user_id`` is a member
    (0 without a user), then the group's ``fields``.

    Raw SQL from the models' tables and columns: the ORM spent longer compiling this query (an
    OR of two indexed lookups and a correlated EXISTS) than the database spent on the whole
    login's statements.
    """
    connection = connections[router.db_for_read(DirectoryGroup)]
    quote = connection.ops.quote_name

    def column(model: Any, name: str) -> str:
        return quote(model._meta.get_field(name).column)

    m2m = get_user_model()._meta.get_field("groups")
    through = quote(m2m.remote_field.through._meta.db_table)
    m_user, m_group = quote(m2m.m2m_column_name()), quote(m2m.m2m_reverse_name())
    links, group_table = quote(DirectoryGroup._meta.db_table), quote(Group._meta.db_table)
    group_pk, link_group = quote(Group._meta.pk.column), column(DirectoryGroup, "group")
    member, member_params = _member_column(user_id, through, m_user, m_group, group_pk)
    values = ", ".join(f"g.{column(Group, name)}" for name in fields)
    parts: list[str] = []
    params: list[Any] = []
    terms, term_params = [], []
    if guids:
        marks = ", ".join(["%s"] * len(guids))
        terms.append(f"d.{column(DirectoryGroup, 'guid')} IN ({marks})")
        term_params += guids
    if user_id is not None:
        terms.append(
            f"d.{link_group} IN (SELECT m.{m_group} FROM {through} m WHERE m.{m_user} = %s)"
        )
        term_params.append(user_id)
    if terms:
        guid, dn, sid, removed = (
            f"d.{column(DirectoryGroup, name)}"
            for name in ("guid", "dn", "object_sid", "removed_at")
        )
        parts.append(
            f"SELECT {guid}, g.{group_pk}, {dn}, {sid}, {removed}, {member}, {values} "
            f"FROM {links} d INNER JOIN {group_table} g ON g.{group_pk} = d.{link_group} "
            f"WHERE {' OR '.join(terms)}"
        )
        params += member_params + term_params
    if default_names:
        marks = ", ".join(["%s"] * len(default_names))
        parts.append(
            f"SELECT NULL, g.{group_pk}, NULL, NULL, NULL, {member}, {values} "
            f"FROM {group_table} g WHERE g.{column(Group, 'name')} IN ({marks})"
        )
        params += member_params + default_names
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        return cursor.fetchall()


def _member_column(
    user_id: int | None, through: str, m_user: str, m_group: str, group_pk: str
) -> tuple[str, list[Any]]:
    """The SQL of :func:`_known_rows`'s member column and its parameters: whether ``user_id``
    is a member of the row's group ``g`` (``0`` without a user)."""
    member, member_params = "0", []
    if user_id is not None:
        member = (
            f"CASE WHEN EXISTS (SELECT 1 FROM {through} m WHERE m.{m_user} = %s "
            f"AND m.{m_group} = g.{group_pk}) THEN 1 ELSE 0 END"
        )
        member_params = [user_id]
    return member, member_params
