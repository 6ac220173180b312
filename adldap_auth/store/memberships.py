"""Memberships of managed groups: the user-groups table (:class:`MembershipTable`), and how a
batch's memberships are diffed against it and written (insert-or-ignore, deferred removals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import Group
from django.db import connections, router
from django.db.models import Count

#: Insert-or-ignore in the SQL of the databases whose own statement beats ``bulk_create``.
_INSERT_OR_IGNORE = {"sqlite": "INSERT OR IGNORE INTO", "mysql": "INSERT IGNORE INTO"}


@dataclass(frozen=True)
class MembershipTable:
    """The user model's user-groups table (the through model of its ``groups`` field) and the
    attribute names of its two columns: ``user_id``/``group_id`` for ``auth.User``, but
    ``person_id`` for ``AUTH_USER_MODEL = "accounts.Person"``. Membership queries name the
    columns through it, never as ``user_id``."""

    model: Any
    user: str  # "user_id", "person_id"...
    group: str  # "group_id"

    @classmethod
    def of(cls, user_model: Any) -> MembershipTable:
        m2m = user_model._meta.get_field("groups")
        through = m2m.remote_field.through
        user = through._meta.get_field(m2m.m2m_field_name()).attname
        group = through._meta.get_field(m2m.m2m_reverse_field_name()).attname
        return cls(through, user, group)


class MembershipsMixin:
    """The membership methods of :class:`~adldap_auth.store.Store`, whose state and shared
    helpers are in ``core``."""

    def sync_memberships(self, desired: dict[int, set[int]], managed_group_ids: set[int]) -> None:
        """Make each listed user's memberships of *managed* groups equal ``desired[user_id]``.

        Memberships of groups the directory does not manage (given by an admin in Django) are
        never touched. With ``defer_membership_removals`` the removals are only collected.
        """
        if not desired:
            return
        table = MembershipTable.of(self.User)
        through = table.model
        if self.defer_membership_removals and not self._managed_counted:
            self._managed_counted = True
            self.managed_memberships = sum(
                count
                for group_id, count in through.objects.values_list(table.group)
                .annotate(count=Count("pk"))
                .order_by()
                if group_id in managed_group_ids
            )
        current: dict[int, dict[int, int]] = {user_id: {} for user_id in desired}
        for row_id, user_id, group_id in through.objects.filter(
            **{f"{table.user}__in": list(desired)}
        ).values_list("pk", table.user, table.group):
            if group_id in managed_group_ids:
                current[user_id][group_id] = row_id
        to_add: list[tuple[int, int]] = []  # (user id, group id)
        to_remove = []
        for user_id, wanted in desired.items():
            have = current[user_id]
            to_add.extend((user_id, group_id) for group_id in wanted - have.keys())
            to_remove.extend(row_id for group_id, row_id in have.items() if group_id not in wanted)
        self.report.counts["memberships_added"] += len(to_add)
        if self.report.changes is not None:
            self._report_membership_changes(to_add, to_remove, current)
        if self.defer_membership_removals:
            self.pending_membership_removals.extend(to_remove)
            to_remove = []
        self.report.counts["memberships_removed"] += len(to_remove)
        if self.dry_run or not (to_add or to_remove):
            return

        def write() -> None:  # the same again after a lock conflict: inserts skip what exists
            self._membership_write()
            with self._transaction():
                if to_add:
                    self._insert_memberships(to_add)
                if to_remove:
                    through.objects.filter(pk__in=to_remove).delete()

        self._retry_locked(write, "write of memberships")

    def apply_membership_removals(self) -> None:
        """Remove the memberships that :meth:`sync_memberships` collected, in one transaction
        (rows that a login removed meanwhile are simply not found)."""
        pending, self.pending_membership_removals = self.pending_membership_removals, []
        self.report.counts["memberships_removed"] += len(pending)
        if self.dry_run or not pending:
            return
        through = MembershipTable.of(self.User).model

        def write() -> None:  # the same again after a lock conflict: deleted rows are not found
            self._membership_write()
            with self._transaction():
                for start in range(0, len(pending), 500):  # SQLite's bound-parameter limit
                    through.objects.filter(pk__in=pending[start : start + 500]).delete()

        self._retry_locked(write, "removal of memberships")

    def _membership_write(self) -> None:
        """Call ``before_membership_write`` once, before this store's first membership write:
        until it succeeds (a lock conflict makes the write, this call included, start again)."""
        hook = self.before_membership_write
        if hook is not None:
            hook()
            self.before_membership_write = None

    def _report_membership_changes(self, to_add, to_remove: list[int], current) -> None:
        """Change lines with names (only when changes are collected: dry runs, -v 2)."""
        removing = set(to_remove)
        pairs = [("add", user_id, group_id) for user_id, group_id in to_add]
        pairs += [
            ("remove", user_id, group_id)
            for user_id, groups in current.items()
            for group_id, row_id in groups.items()
            if row_id in removing
        ]
        users = dict(
            self.User.objects.filter(pk__in={u for _, u, _ in pairs}).values_list(
                "pk", self.username_field
            )
        )
        groups = dict(
            Group.objects.filter(pk__in={g for _, _, g in pairs}).values_list("pk", "name")
        )
        for verb, user_id, group_id in pairs:
            planned = self._placeholders
            user = users.get(user_id, planned.get(user_id, user_id))
            group = groups.get(group_id, planned.get(group_id, group_id))
            self.report.change(f"{verb} membership {user!r} in {group!r}")

    def _insert_memberships(self, pairs: list[tuple[int, int]]) -> None:
        """Insert ``(user id, group id)`` rows of the user-groups table, skipping the rows that
        exist already (a login may have added one meanwhile).

        On SQLite and MySQL/MariaDB one ``executemany`` of the database's own insert-or-ignore
        statement: no model instance per row, which is most of the cost of a first run's
        memberships with ``bulk_create`` (see benchmarks/RESULTS.md). Elsewhere (PostgreSQL, where it is as fast, and
        any other backend) Django's public ``bulk_create(..., ignore_conflicts=True)``."""
        table = MembershipTable.of(self.User)
        connection = connections[router.db_for_write(table.model)]
        verb = _INSERT_OR_IGNORE.get(connection.vendor)
        if verb is None:
            rows = [table.model(**{table.user: u, table.group: g}) for u, g in pairs]
            table.model.objects.bulk_create(rows, ignore_conflicts=True)
            return
        quote = connection.ops.quote_name
        columns = [table.model._meta.get_field(name).column for name in (table.user, table.group)]
        sql = (
            f"{verb} {quote(table.model._meta.db_table)} "
            f"({quote(columns[0])}, {quote(columns[1])}) VALUES (%s, %s)"
        )
        with connection.cursor() as cursor:
            cursor.executemany(sql, pairs)
