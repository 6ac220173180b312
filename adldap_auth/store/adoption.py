"""Adoption: whether an entry without a link may take over the Django user of its username
(a local account, or a user linked to another entry: relinked), reported when refused."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ..conf import get_config
from ..mapping import UserRecord
from ..models import DirectoryUser
from .users import UserOutcome


def adoption_obstacles(user: Any) -> list[str]:
    """Why the directory must not take over an existing Django user by username: it is a
    superuser, staff, or can log in with a local password (an empty password field cannot)."""
    reasons = []
    if getattr(user, "is_superuser", False):
        reasons.append("is a superuser")
    if getattr(user, "is_staff", False):
        reasons.append("is staff")
    if user.password and user.has_usable_password():
        reasons.append("has a usable password")
    return reasons


class AdoptionMixin:
    """The adoption methods of :class:`~adldap_auth.store.Store`, whose state and shared
    helpers are in ``core``."""

    def _match_unlinked(
        self, record: UserRecord, found: list[Any], other_links: dict[Any, DirectoryUser]
    ) -> tuple[Any, DirectoryUser | None] | None:
        """The Django user an entry without a link takes: ``(None, None)`` a new one,
        ``(user, None)`` an existing one (adopted), ``(user, link)`` a user whose ``link`` now
        names this entry (relinked). None when the entry is skipped (reported) or deferred."""
        if not found:
            return None, None
        if len(found) > 1:
            names = " and ".join(repr(getattr(user, self.username_field)) for user in found)
            self.report.problem(
                "user %s skipped: Django users %s differ only in case, so the sync cannot tell "
                "which one is %r; rename or merge them",
                record.dn,
                names,
                record.username,
            )
            self.report.counts["users_skipped"] += 1
            return None
        user = found[0]
        old_link = other_links.get(user.pk)
        if old_link is not None:
            return self._relink_decision(record, user, old_link)
        if not self._may_adopt(record, user):
            return None
        return user, None

    def _may_adopt(self, record: UserRecord, user: Any) -> bool:
        """Whether a directory entry may take over an existing Django user: never a superuser,
        a staff user or a user with a usable password (a local account), unless
        LDAP_SYNC_ADOPT_USERS names it or ``manage.py ldaplink`` links it. A refusal is reported
        and leaves the user exactly as it was."""
        name = getattr(user, self.username_field)
        reasons = adoption_obstacles(user)
        if not reasons or name.lower() in self.adopt_users or get_config().may_adopt_user(name):
            return True
        self.report.problem(
            "user %s skipped: Django user %r %s, so the directory does not take it over; name "
            "it in LDAP_SYNC_ADOPT_USERS or run 'manage.py ldaplink %s' to link it on purpose",
            record.dn,
            name,
            " and ".join(reasons),
            name,
        )
        self.report.counts["users_adoption_refused"] += 1
        return False

    def _relink_decision(
        self, record: UserRecord, user: Any, old_link: DirectoryUser
    ) -> tuple[Any, DirectoryUser] | None:
        """The entry's username belongs to a Django user linked to another entry: typically an
        account deleted and re-created in the directory (a new objectGUID/entryUUID). The user
        moves to the new entry when the old entry is gone (``entry_gone``) and the adoption
        rules allow it; batch runs decide once their read is complete (deferred)."""
        if self.entry_gone is None and self.defer_relinks:
            self.deferred_relinks.append(record)
            return None
        name = getattr(user, self.username_field)
        if self.entry_gone is None or not self.entry_gone(old_link):
            self.report.problem(
                "user %s skipped: Django user %r is linked to another directory entry (%s)%s; "
                "rename one of the two entries, or run 'manage.py ldaplink %s --relink' to move "
                "the user to this entry",
                record.dn,
                name,
                old_link.dn,
                ", which still exists" if self.entry_gone is not None else "",
                name,
            )
            self.report.counts["users_skipped"] += 1
            return None
        if not self._may_adopt(record, user):
            return None
        self.report.warning(
            "user %s: Django user %r relinked to this entry; its former entry %s is gone",
            record.dn,
            name,
            old_link.dn,
        )
        self.report.counts["users_relinked"] += 1
        self.report.change(f"relink user {record.username!r} (former entry {old_link.dn} gone)")
        old_link.guid = record.guid
        return user, old_link

    def sync_deferred_users(self, present_guids: Collection[str]) -> list[UserOutcome]:
        """Batch runs, once every entry of the scope was read (``present_guids``): the entries
        deferred by :meth:`_relink_decision`. A user linked to an entry no longer in the scope
        moves to the new entry; otherwise the new entry is skipped and reported."""
        records = list({record.guid: record for record in self.deferred_relinks}.values())
        self.deferred_relinks = []
        if not records:
            return []
        saved = self.entry_gone, self.defer_relinks
        self.entry_gone, self.defer_relinks = (lambda link: link.guid not in present_guids), False
        try:
            return self.sync_users(records)
        finally:
            self.entry_gone, self.defer_relinks = saved
