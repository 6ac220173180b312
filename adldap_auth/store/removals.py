"""Removals: users gone from the directory (or disabled) get the removal callbacks and lose
their managed memberships, gone groups are retired or deleted, and both are deleted once
LDAP_SYNC_REMOVAL_GRACE is over."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence, Set
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import Group

from .. import signals
from ..models import DirectoryGroup, DirectoryUser
from ..sessions import end_sessions
from .memberships import MembershipTable

#: Rows fetched at a time when every link is compared with the run's present guids.
_CHUNK = 2000


class RemovalsMixin:
    """The removal methods of :class:`~adldap_auth.store.Store`, whose state and shared
    helpers are in ``core``."""

    def removal_candidates(self, present_guids: Set[str]) -> list[DirectoryUser]:
        """Linked, not yet removed users whose entry was not found in the run's scope."""
        active = DirectoryUser.objects.filter(removed_at__isnull=True)
        rows = active.values_list("pk", "guid").iterator(chunk_size=_CHUNK)  # not 1M rows at once
        missing = [pk for pk, guid in rows if guid not in present_guids]
        if not missing:
            return []
        return list(DirectoryUser.objects.select_related("user").filter(pk__in=missing))

    def forget_gone_disabled_users(
        self, present_guids: Set[str], managed_group_ids: set[int]
    ) -> None:
        """Users removed because their entry was disabled, whose entry is now gone: they lose
        their managed memberships like any user gone from the directory (no callback runs
        again: they were removed already)."""
        disabled = DirectoryUser.objects.filter(
            removed_at__isnull=False, removal_reason=DirectoryUser.REASON_DISABLED
        )
        rows = disabled.values_list("pk", "guid").iterator(chunk_size=_CHUNK)
        gone = [pk for pk, guid in rows if guid not in present_guids]
        for link in DirectoryUser.objects.select_related("user").filter(pk__in=gone):
            username = getattr(link.user, self.username_field)
            self.report.change(f"forget user {username!r} (gone from the directory)")
            if self.dry_run:
                if managed_group_ids:
                    self._drop_memberships(link.user_id, username, managed_group_ids)
                continue
            with self._transaction():
                if managed_group_ids:
                    self._drop_memberships(link.user_id, username, managed_group_ids)
                link.removal_reason = DirectoryUser.REASON_MISSING
                link.save(update_fields=["removal_reason"])

    def remove_users(
        self,
        links: Iterable[DirectoryUser],
        callbacks: Sequence[Callable],
        reason: str,
        managed_group_ids: set[int] | None = None,
    ) -> None:
        """Apply the removal callbacks (deactivate, delete...) to users, one transaction each,
        then end the removed users' sessions (:func:`adldap_auth.sessions.end_sessions`).

        ``managed_group_ids`` (entries gone from the directory): their memberships of these
        groups go too, since no directory entry lists them any more; a disabled entry keeps
        what the directory still lists.
        """
        removed_pks: list[Any] = []
        for link in links:
            username = getattr(link.user, self.username_field)
            if username.lower() in self.config.exempt_usernames:
                continue
            self.report.counts["users_removed"] += 1
            self.report.change(f"remove user {username!r} ({reason})")
            if self.dry_run:
                if managed_group_ids:
                    self._drop_memberships(link.user_id, username, managed_group_ids)
                continue
            user_pk = link.user_id  # kept: a delete callback clears user.pk
            try:
                with self._transaction():
                    if managed_group_ids:
                        self._drop_memberships(user_pk, username, managed_group_ids)
                    link.removed_at = self.now
                    link.removal_reason = reason
                    link.save(update_fields=["removed_at", "removal_reason"])
                    user = link.user
                    for callback in callbacks:
                        callback(user)
            except Exception as error:
                self.report.problem("removal of %s failed: %s", link.dn, error)
                continue
            removed_pks.append(user_pk)
            self._send(signals.user_removed, user=user, reason=reason)
        if removed_pks:
            try:
                end_sessions(removed_pks)
            except Exception as error:  # the removals stand; get_user() still refuses them
                self.report.problem("ending the sessions of removed users failed: %s", error)

    def _drop_memberships(self, user_pk: Any, username: str, group_ids: set[int]) -> None:
        """Remove (or, in a dry run, plan) a user's memberships of these groups."""
        table = MembershipTable.of(self.User)
        rows = table.model.objects.filter(**{table.user: user_pk, f"{table.group}__in": group_ids})
        if self.report.changes is not None:
            for name in Group.objects.filter(pk__in=rows.values(table.group)).values_list(
                "name", flat=True
            ):
                self.report.change(f"remove membership {username!r} in {name!r}")
        if not self.dry_run:
            self._membership_write()
        count = rows.count() if self.dry_run else rows.delete()[0]
        self.report.counts["memberships_removed"] += count

    def delete_removed_users(
        self, links: Iterable[DirectoryUser], callbacks: Sequence[Callable]
    ) -> None:
        """LDAP_SYNC_REMOVAL_GRACE is over for these removed users: apply ``callbacks`` (the
        delete callback), one transaction each. Counted as ``users_deleted``."""
        for link in links:
            username = getattr(link.user, self.username_field)
            if username.lower() in self.config.exempt_usernames:
                continue
            self.report.counts["users_deleted"] += 1
            self.report.change(
                f"delete user {username!r} (removed at {link.removed_at:%Y-%m-%d %H:%M})"
            )
            if self.dry_run:
                continue
            try:
                with self._transaction():
                    for callback in callbacks:
                        callback(link.user)
            except Exception as error:
                self.report.problem("deletion of %s failed: %s", link.dn, error)

    def remove_groups(
        self, present_guids: set[str], action: str, grace: timedelta | None = None
    ) -> None:
        """Groups gone from the directory: kept (retired: link marked removed, memberships
        removed by the sync) or deleted, by LDAP_SYNC_GROUP_REMOVAL_ACTION.

        With ``grace`` (LDAP_SYNC_REMOVAL_GRACE), "DELETE" retires first as well, and deletes
        a group retired longer ago than ``grace`` and still gone (``groups_deleted``); one
        that comes back meanwhile is linked again, with its permissions.
        """
        delete_now = action == "DELETE" and grace is None
        if action == "DELETE" and grace is not None:
            self._delete_retired_groups(present_guids, grace)
        active = DirectoryGroup.objects.filter(removed_at__isnull=True)
        gone = [pk for pk, guid in active.values_list("pk", "guid") if guid not in present_guids]
        if not gone:
            return
        for link in DirectoryGroup.objects.select_related("group").filter(pk__in=gone):
            self.report.counts["groups_removed"] += 1
            self.report.change(f"{'delete' if delete_now else 'retire'} group {link.group.name!r}")
            if self.dry_run:
                continue
            if delete_now:
                link.group.delete()
            else:
                link.removed_at = self.now
                link.save(update_fields=["removed_at"])

    def _delete_retired_groups(self, present_guids: set[str], grace: timedelta) -> None:
        """Delete the groups retired longer ago than ``grace`` that are still gone."""
        expired = DirectoryGroup.objects.select_related("group").filter(
            removed_at__isnull=False, removed_at__lte=self.now - grace
        )
        for link in expired:
            if link.guid in present_guids:
                continue
            self.report.counts["groups_deleted"] += 1
            self.report.change(
                f"delete group {link.group.name!r} (retired at {link.removed_at:%Y-%m-%d %H:%M})"
            )
            if not self.dry_run:
                link.group.delete()
